"""IMAP login: LOGIN, AUTHENTICATE PLAIN (RFC 4616) and AUTHENTICATE XOAUTH2, plus ``auto``.

Secrets are handled as the POP3 source handles them (:class:`popflow.sources.pop3_auth.AuthRequest`):
fetched lazily, registered with :mod:`popflow.redact`, scrubbed from every server text we show.
"""

from __future__ import annotations

import base64

from popflow import AuthenticationError, SourceFatalError
from popflow.sources.pop3_auth import AuthRequest, decode_challenge, xoauth2_initial_response
from popflow_imap.wire import ImapWire, Reply, quote


def mechanisms(capabilities: dict[str, list[str]]) -> set[str]:
    """SASL mechanisms from ``AUTH=…`` capabilities."""
    return {name[5:] for name in capabilities if name.startswith("AUTH=")}


def choose(method: str, request: AuthRequest, capabilities: dict[str, list[str]]) -> str:
    """The mechanism to use: ``auto`` picks XOAUTH2 with a token, else PLAIN if offered, else LOGIN."""
    if method != "auto":
        return method
    if request.token is not None:
        return "xoauth2"
    if "PLAIN" in mechanisms(capabilities):
        return "plain"
    return "login"


def authenticate(wire: ImapWire, request: AuthRequest, method: str, capabilities: dict[str, list[str]]) -> str:
    """Log in with ``method`` (after ``auto`` is resolved); returns the mechanism used."""
    chosen = choose(method, request, capabilities)
    if chosen != "xoauth2" and not request.encrypted and not request.allow_insecure:
        raise AuthenticationError(f"{request.label}: refusing to send the password over an unencrypted "
                                  "connection (use tls: implicit or starttls, or allow_insecure: true)")
    if chosen == "login":
        if "LOGINDISABLED" in capabilities:
            raise AuthenticationError(f"{request.label}: the server disabled LOGIN (LOGINDISABLED)")
        password = request.get_password()
        try:
            line = b"LOGIN " + quote(request.username) + b" " + quote(password)
        except ValueError:
            raise AuthenticationError(f"{request.label}: the username or password holds CR, LF or NUL") from None
        request.remember(line.decode("utf-8", "replace"))
        _finish(wire, request, wire.command(line), "LOGIN")
    elif chosen == "plain":
        credentials = f"\0{request.username}\0{request.get_password()}"
        encoded = base64.b64encode(credentials.encode())
        request.remember(credentials)
        request.remember(encoded)
        _sasl(wire, request, "PLAIN", encoded, capabilities)
    else:
        initial = xoauth2_initial_response(request.username, request.get_token())
        request.remember(initial)
        request.remember(base64.b64decode(initial))
        _sasl(wire, request, "XOAUTH2", initial, capabilities)
    return chosen


def _sasl(wire: ImapWire, request: AuthRequest, name: str, response: bytes,
          capabilities: dict[str, list[str]]) -> None:
    """AUTHENTICATE in the two-step form (Microsoft 365 needs it for XOAUTH2; every server takes it)."""
    tag = wire.command(f"AUTHENTICATE {name}")
    reply = _until_tagged_or_continuation(wire, tag)
    if reply.tag != "+":
        raise _refusal(request, reply, f"AUTHENTICATE {name}")
    wire.send_line(response)
    reply = _until_tagged_or_continuation(wire, tag)
    if reply.tag == "+":
        # A rejected token: the server explains in a base64 JSON challenge; an empty answer ends it.
        detail = request.scrub(decode_challenge(request.scrub(reply.text)))
        wire.send_line(b"")
        final = _until_tagged_or_continuation(wire, tag)
        if final.tag == "+":
            wire.send_line(b"*")
            final = _until_tagged_or_continuation(wire, tag)
        server = request.scrub(final.message)
        raise AuthenticationError(f"{request.label}: {name} refused: {detail}" + (f" ({server})" if server else ""))
    if not reply.ok:
        raise _refusal(request, reply, f"AUTHENTICATE {name}")


def _finish(wire: ImapWire, request: AuthRequest, tag: str, what: str) -> None:
    reply = _until_tagged_or_continuation(wire, tag)
    if reply.tag == "+":
        raise AuthenticationError(f"{request.label}: {what}: unexpected continuation from the server")
    if not reply.ok:
        raise _refusal(request, reply, what)


def _until_tagged_or_continuation(wire: ImapWire, tag: str) -> Reply:
    """Skip untagged responses (a server may send CAPABILITY or alerts) up to ``+`` or the completion."""
    for _ in range(1000):
        reply = wire.read_reply()
        if reply.tag in (tag, "+"):
            return reply
        if reply.status == "BYE":
            raise AuthenticationError(f"{wire.host}:{wire.port}: the server closed the session during login")
    raise SourceFatalError(f"{wire.host}:{wire.port}: no end to the untagged responses during login")


def _refusal(request: AuthRequest, reply: Reply, what: str) -> Exception:
    text = request.scrub(reply.message)
    code, _ = reply.code
    if code in ("UNAVAILABLE", "SERVERBUG", "INUSE", "LIMIT"):
        return SourceFatalError(f"{request.label}: the server failed during login ([{code}] {text})")
    return AuthenticationError(f"{request.label}: {what} refused: {text or 'no reason given'}")

