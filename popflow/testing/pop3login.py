"""The login commands of the test server's sessions: USER/PASS, APOP, SASL PLAIN and SASL XOAUTH2.

Kept apart from :mod:`popflow.testing.pop3_server_session` (which mixes this class in) so each stays small.
XOAUTH2 follows what real servers do (see Dovecot, Gmail, Microsoft 365): two-step or one-step,
and a rejected token answered with a base64 JSON challenge, then ``-ERR`` after the client's
empty line (or an abort after ``*``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import TYPE_CHECKING

from popflow.testing.mailbox import StoredMessage

if TYPE_CHECKING:
    from popflow.testing.pop3server import POP3TestServer

TRANSACTION = "TRANSACTION"


class DropConnection(Exception):
    """Raised to end the session at once, without a reply and without applying deletions."""

    def __init__(self, reset: bool = False) -> None:
        super().__init__("connection dropped")
        self.reset = reset


class LoginCommands:
    """AUTHORIZATION-state login commands; the session class provides the I/O methods below."""

    server: POP3TestServer
    timestamp: str
    state: str
    user: str | None
    messages: list[StoredMessage]
    _pending_user: str | None

    def _send(self, data: bytes) -> None:
        raise NotImplementedError

    def _ok(self, text: str = "") -> None:
        raise NotImplementedError

    def _err(self, text: str) -> None:
        raise NotImplementedError

    def _readline(self) -> str | None:
        raise NotImplementedError

    def cmd_user(self, args: list[str]) -> bool:
        """USER name."""
        if len(args) != 1:
            self._err("USER needs exactly one argument")
            return True
        self._pending_user = args[0]
        self._ok()
        return True

    def cmd_pass(self, args: list[str]) -> bool:
        """PASS password (after USER)."""
        user, self._pending_user = self._pending_user, None
        if user is None:
            self._err("USER first")
            return True
        password = " ".join(args)  # RFC 1939 lets the password contain spaces
        self._finish_login(user, self.server.check_password(user, password))
        return True

    def cmd_apop(self, args: list[str]) -> bool:
        """APOP name digest: MD5 of the greeting's timestamp and the password."""
        if not self.server.apop or len(args) != 2:
            self._err("APOP not available" if not self.server.apop else "APOP needs name and digest")
            return True
        user, digest = args
        expected = hashlib.md5((self.timestamp + self.server.password).encode()).hexdigest()
        ok = user == self.server.username and hmac.compare_digest(digest.lower(), expected)
        self._finish_login(user, ok)
        return True

    def cmd_auth(self, args: list[str]) -> bool:
        """AUTH mechanism [initial-response] (RFC 5034); bare AUTH lists the mechanisms."""
        if not args:
            self._send(b"+OK\r\n" + "".join(f"{m}\r\n" for m in self.server.sasl).encode() + b".\r\n")
            return True
        mechanism, initial = args[0].upper(), (args[1] if len(args) > 1 else None)
        if mechanism not in self.server.sasl:
            self._err("[AUTH] Unsupported authentication mechanism.")
            return True
        if mechanism == "PLAIN":
            self._auth_plain(initial)
        else:
            self._auth_xoauth2(initial)
        return True

    def _challenge(self, text: bytes = b"") -> str | None:
        """Send a SASL challenge and read the answer; ``None`` when the client aborted with ``*``."""
        self._send(b"+ " + text + b"\r\n")
        answer = self._readline()
        if answer is None:
            raise DropConnection()
        if answer.strip() == "*":
            self._err("Authentication aborted by client.")
            return None
        return answer.strip()

    def _decode(self, data: str) -> bytes | None:
        if data == "=":
            return b""
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            self._err("[AUTH] Invalid base64 data in continued response")
            return None

    def _auth_plain(self, initial: str | None) -> None:
        response = initial if initial is not None else self._challenge()
        if response is None:
            return
        decoded = self._decode(response)
        if decoded is None:
            return
        fields = decoded.split(b"\0")
        if len(fields) != 3:
            self._err("[AUTH] Invalid PLAIN response")
            return
        authzid, authcid, password = (f.decode("utf-8", "replace") for f in fields)
        ok = authzid in ("", authcid) and self.server.check_password(authcid, password)
        self._finish_login(authcid, ok)

    def _auth_xoauth2(self, initial: str | None) -> None:
        if initial is not None and self.server.style == "microsoft":
            # Microsoft 365 only takes the two-step form: AUTH XOAUTH2, then the response after "+".
            self._err("Protocol error.")
            return
        response = initial if initial is not None else self._challenge()
        if response is None:
            return
        decoded = self._decode(response)
        if decoded is None:
            return
        fields = dict(part.split("=", 1) for part in decoded.decode("utf-8", "replace").split("\x01")
                      if "=" in part)
        user, auth = fields.get("user", ""), fields.get("auth", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        if user and token and self.server.check_token(user, token):
            self._finish_login(user, True)
            return
        # RFC 7628-style error: a JSON challenge, then the client's empty line (or "*").
        status = {"status": "401", "schemes": "bearer", "scope": self.server.oauth_scope}
        answer = self._challenge(base64.b64encode(json.dumps(status, separators=(",", ":")).encode()))
        if answer is not None:
            self._finish_login(user, False)

    def _finish_login(self, user: str, ok: bool) -> None:
        if not ok:
            self.server.stats.bump("failed_logins")
            if self.server.auth_failure_delay and self.server.stopping.wait(self.server.auth_failure_delay):
                raise DropConnection()
            self._err("[AUTH] Authentication failed.")
            return
        too_soon = self.server.policies.login_refusal(user)
        if too_soon is not None:
            self.server.stats.bump("delayed_logins")
            self._err(too_soon)
            return
        if not self.server.mailbox.acquire(self):
            self._err("[IN-USE] Mailbox is locked by another POP3 session.")
            return
        self.server.stats.bump("logins")
        self.user, self.state = user, TRANSACTION
        self.messages = self.server.mailbox.snapshot()
        self._ok(f"Logged in. {len(self.messages)} messages")
