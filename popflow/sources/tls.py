"""TLS for mail connections: one verified-by-default context factory and readable handshake errors."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from popflow.errors import SourceConnectionError


def make_ssl_context(ca_file: Path | str | None = None, verify: bool = True) -> ssl.SSLContext:
    """A client context: system CAs plus ``ca_file``, TLS 1.2 or newer, hostname checked.

    ``verify=False`` turns off certificate and hostname checks; callers must warn about it.
    """
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise SourceConnectionError(f"cannot load CA file {str(ca_file)!r}: {exc}") from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def describe_tls_error(exc: BaseException, host: str, port: int) -> str:
    """One line naming the server and why the handshake failed."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or str(exc)
        return f"TLS to {host}:{port} failed: certificate verify failed: {reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS to {host}:{port} failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"TLS to {host}:{port} failed: timed out during the handshake"
    return f"TLS to {host}:{port} failed: {exc}"


def wrap_socket(sock: socket.socket, context: ssl.SSLContext, host: str, port: int) -> ssl.SSLSocket:
    """Do the TLS handshake on a connected socket; any failure is a SourceConnectionError."""
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise SourceConnectionError(describe_tls_error(exc, host, port)) from None
