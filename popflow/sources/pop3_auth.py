"""POP3 authentication: USER/PASS, APOP, SASL PLAIN (RFC 5034) and SASL XOAUTH2, plus ``auto``.

Secrets (passwords, tokens) are sent on the wire and nowhere else: they never appear in log
records or exception messages. A server's refusal names ``user@host`` and the server's own text,
scrubbed of every form of what we sent: some servers echo the client's input, so the plain
password, the base64 SASL responses (``AGFsaWNl...``) and their URL-encoded and escaped forms are
all replaced (see :meth:`AuthRequest.scrub`). Each of them is also registered with
:mod:`popflow.redact`, so no log line can show it either.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from popflow.errors import AuthenticationError, SourceFatalError
from popflow.redact import redact, register_secret
from popflow.sources.pop3_wire import Pop3Wire, Response

log = logging.getLogger(__name__)

TOKEN_COMMAND_TIMEOUT = 60.0
"""Seconds an ``oauth2_token_command`` may take (it may refresh a token over the network)."""


@dataclass
class AuthRequest:
    """Everything a mechanism needs; secrets are fetched lazily through the callables."""

    username: str
    host: str
    capabilities: dict[str, list[str]]
    encrypted: bool
    allow_insecure: bool
    password: Callable[[], str] | None = None
    token: Callable[[], str] | None = None
    apop_timestamp: bytes | None = None
    secrets_seen: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``user@host`` for messages."""
        return f"{self.username}@{self.host}"

    def get_password(self) -> str:
        """The password (remembered so it can be scrubbed from server messages)."""
        if self.password is None:
            raise AuthenticationError(f"{self.label}: no password configured")
        value = self.password()
        self.remember(value)
        return value

    def get_token(self) -> str:
        """The OAuth2 access token."""
        if self.token is None:
            raise AuthenticationError(f"{self.label}: no oauth2_token_command or oauth2_token_file configured")
        value = self.token()
        self.remember(value)
        return value

    def remember(self, secret: str | bytes) -> None:
        """Note something secret we are about to send (a password, a SASL response) for :meth:`scrub`."""
        text = secret.decode("ascii", "replace") if isinstance(secret, bytes) else secret
        self.secrets_seen.append(text)
        register_secret(text)

    def scrub(self, text: str) -> str:
        """Server text with every form of every secret we sent replaced (some servers echo input)."""
        return redact(text, self.secrets_seen)

    def sasl(self) -> set[str]:
        """SASL mechanisms the server advertised in CAPA."""
        return {m.upper() for m in self.capabilities.get("SASL", [])}


def refusal(request: AuthRequest, response: Response, what: str) -> Exception:
    """The right exception for a ``-ERR`` during login."""
    text = request.scrub(response.text)
    code = response.code
    if code == "IN-USE":
        return SourceFatalError(f"{request.label}: maildrop locked by another session ({text})")
    if code == "LOGIN-DELAY":
        announced = request.capabilities.get("LOGIN-DELAY", [])
        delay = f" at least {announced[0]}s after the last login" if announced[:1] and announced[0].isdigit() else ""
        return SourceFatalError(f"{request.label}: the server asks to wait{delay} before logging in again ({text}); "
                                "popflow run polls no more often than the server's LOGIN-DELAY")
    if code in ("SYS/TEMP", "SYS/PERM"):
        return SourceFatalError(f"{request.label}: the server failed during login ({text})")
    return AuthenticationError(f"{request.label}: {what} refused: {text or 'no reason given'}")


def _require_encryption(request: AuthRequest, method: str) -> None:
    if not request.encrypted and not request.allow_insecure:
        raise AuthenticationError(
            f"{request.label}: refusing to send the password with {method} over an unencrypted connection "
            "(use tls: implicit or starttls, or allow_insecure: true)"
        )


def _expect_ok(wire: Pop3Wire, request: AuthRequest, what: str) -> None:
    response = wire.read_response()
    if response.continuation:
        wire.send_line(b"*")  # abort the exchange we don't understand
        wire.read_response()
        raise AuthenticationError(f"{request.label}: {what}: unexpected challenge from the server")
    if not response.ok:
        raise refusal(request, response, what)


def auth_user(wire: Pop3Wire, request: AuthRequest) -> None:
    """USER/PASS (RFC 1939): the password travels as-is, so TLS is required."""
    _require_encryption(request, "USER/PASS")
    password = request.get_password()
    wire.send_line(f"USER {request.username}")
    _expect_ok(wire, request, "USER")
    wire.send_line(f"PASS {password}")
    _expect_ok(wire, request, "login (USER/PASS)")


def apop_digest(timestamp: bytes, password: str) -> str:
    """The APOP digest: hex MD5 of the greeting's timestamp followed by the password."""
    return hashlib.md5(timestamp + password.encode("utf-8"), usedforsecurity=False).hexdigest()


def auth_apop(wire: Pop3Wire, request: AuthRequest) -> None:
    """APOP (RFC 1939): MD5 challenge-response. Weak (MD5, server keeps plaintext passwords)."""
    if not request.apop_timestamp:
        raise AuthenticationError(f"{request.label}: the server's greeting has no APOP timestamp")
    digest = apop_digest(request.apop_timestamp, request.get_password())
    request.remember(digest)  # replayable against the same greeting: not for the logs either
    wire.send_line(f"APOP {request.username} {digest}")
    _expect_ok(wire, request, "login (APOP)")


def auth_plain(wire: Pop3Wire, request: AuthRequest) -> None:
    """SASL PLAIN (RFC 4616 over RFC 5034): ``AUTH PLAIN``, ``+``, base64(authzid NUL user NUL pass)."""
    _require_encryption(request, "SASL PLAIN")
    credentials = f"\0{request.username}\0{request.get_password()}"
    encoded = base64.b64encode(credentials.encode())
    request.remember(credentials)
    request.remember(encoded)
    wire.send_line(b"AUTH PLAIN")
    response = wire.read_response()
    if not response.continuation:
        if response.ok:
            raise AuthenticationError(f"{request.label}: AUTH PLAIN: the server skipped the exchange")
        raise refusal(request, response, "AUTH PLAIN")
    wire.send_line(encoded)
    _expect_ok(wire, request, "login (AUTH PLAIN)")


def xoauth2_initial_response(username: str, token: str) -> bytes:
    """base64 of ``user=<u>^Aauth=Bearer <token>^A^A`` (Google's and Microsoft's XOAUTH2 format)."""
    return base64.b64encode(f"user={username}\x01auth=Bearer {token}\x01\x01".encode())


def auth_xoauth2(wire: Pop3Wire, request: AuthRequest) -> None:
    """SASL XOAUTH2 in the two-step form (``AUTH XOAUTH2``, ``+``, response) Microsoft 365 needs.

    A rejected token comes back as a ``+ <base64 JSON>`` challenge; we answer with an empty line
    as the protocol requires, read the final ``-ERR`` and report the decoded JSON status.
    """
    token = request.get_token()
    initial = xoauth2_initial_response(request.username, token)
    request.remember(initial)
    request.remember(base64.b64decode(initial))
    wire.send_line(b"AUTH XOAUTH2")
    response = wire.read_response()
    if not response.continuation:
        if response.ok:
            raise AuthenticationError(f"{request.label}: AUTH XOAUTH2: the server skipped the exchange")
        raise refusal(request, response, "AUTH XOAUTH2")
    wire.send_line(initial)
    response = wire.read_response()
    if response.continuation:
        detail = request.scrub(decode_challenge(request.scrub(response.text)))
        wire.send_line(b"")
        final = wire.read_response()
        server = request.scrub(final.text) if not final.ok else ""
        raise AuthenticationError(
            f"{request.label}: XOAUTH2 token rejected: {detail}" + (f" ({server})" if server else "")
        )
    if not response.ok:
        raise refusal(request, response, "login (AUTH XOAUTH2)")


def decode_challenge(text: str) -> str:
    """A server's base64 XOAUTH2 error challenge as short, readable text (JSON keys sorted)."""
    try:
        decoded = base64.b64decode(text.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return f"undecodable challenge {text[:100]!r}"
    try:
        return json.dumps(json.loads(decoded), sort_keys=True)
    except ValueError:
        return decoded[:200]


MECHANISMS: dict[str, Callable[[Pop3Wire, AuthRequest], None]] = {
    "user": auth_user,
    "apop": auth_apop,
    "plain": auth_plain,
    "xoauth2": auth_xoauth2,
}


def choose_auto(request: AuthRequest) -> str:
    """The mechanism ``auth: auto`` picks from the server's CAPA and the configured secrets.

    With a token source: XOAUTH2. With a password over TLS: SASL PLAIN if advertised, else
    USER/PASS (both equally protected by TLS; APOP only when nothing else is offered). Over an
    unencrypted connection (``allow_insecure``): APOP when the greeting has a timestamp, since it
    never sends the password itself; else PLAIN/USER.
    """
    if request.token is not None:
        return "xoauth2"
    sasl = request.sasl()
    has_user = "USER" in request.capabilities or not request.capabilities
    if not request.encrypted and request.apop_timestamp:
        return "apop"
    if "PLAIN" in sasl:
        return "plain"
    if has_user:
        return "user"
    if request.apop_timestamp:
        return "apop"
    return "user"


def authenticate(wire: Pop3Wire, request: AuthRequest, method: str) -> str:
    """Log in with ``method`` (``auto`` resolved first); return the mechanism used."""
    chosen = choose_auto(request) if method == "auto" else method
    if chosen not in MECHANISMS:
        raise AuthenticationError(f"{request.label}: unknown auth method {chosen!r}")
    if not request.encrypted and chosen in ("user", "plain"):
        log.warning("%s: sending the password over an unencrypted connection (allow_insecure)", request.label)
    MECHANISMS[chosen](wire, request)
    return chosen


def run_token_command(command: str | list[str], label: str, where: str = "oauth2_token_command") -> str:
    """Run ``oauth2_token_command`` and return its stdout, stripped (the token is never logged).

    A string runs through ``/bin/sh -c`` (pipes and quoting work as in a shell); a list runs as argv.
    Errors name the command by its config key (``where``), never by its text: ``${VAR}`` has been
    expanded in it, and it typically carries a client secret. The error output quoted is scrubbed
    of every registered secret, which includes each ``${VAR}`` value expanded into the command
    (see :meth:`popflow.config.Config.env_secrets`): a failing program often prints its arguments.
    """
    argv = command if isinstance(command, list) else ["/bin/sh", "-c", command]
    try:
        result = subprocess.run(argv, capture_output=True, timeout=TOKEN_COMMAND_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise AuthenticationError(f"{label}: {where} timed out after {TOKEN_COMMAND_TIMEOUT:g}s") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__  # not str(exc): it repeats the program's path
        raise AuthenticationError(f"{label}: cannot run {where}: {reason}") from None
    if result.returncode != 0:
        errors = redact(result.stderr.decode("utf-8", "replace")).strip().splitlines()
        reason = errors[-1][:200] if errors else "no error output"
        raise AuthenticationError(f"{label}: {where} exited with status {result.returncode}: {reason}")
    token = result.stdout.decode("utf-8", "replace").strip()
    if not token:
        raise AuthenticationError(f"{label}: {where} printed no token")
    if any(ch in token for ch in "\r\n\x01"):
        raise AuthenticationError(f"{label}: {where} printed more than one line")
    return token


