"""TLS for mail connections: one verified-by-default context factory and readable handshake errors."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from pathlib import Path

from popflow.errors import SourceConnectionError

_contexts: dict[tuple[bool, str | None, int, int], ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def make_ssl_context(ca_file: Path | str | None = None, verify: bool = True) -> ssl.SSLContext:
    """A client context: system CAs plus ``ca_file``, TLS 1.2 or newer, hostname checked.

    ``verify=False`` turns off certificate and hostname checks; callers must warn about it.

    Contexts are shared (an ``SSLContext`` is safe to use from many threads and is not changed
    after this): loading the system CA store costs about 20 ms of CPU, half the CPU of an empty
    poll (docs/performance.md, "Scale-out on Celery"). A ``ca_file`` replaced on disk (another
    mtime or size) gets a new context; a changed system store is read at the next start.
    """
    try:
        stat = os.stat(ca_file) if ca_file is not None else None
    except OSError:
        stat = None  # let the load below report it
    key = (verify, str(ca_file) if ca_file is not None else None,
           stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
    with _contexts_lock:
        context = _contexts.get(key)
        if context is None:
            if len(_contexts) >= 64:  # CA files replaced again and again: keep the cache small
                _contexts.clear()
            context = _contexts[key] = _new_context(ca_file, verify)
    return context


def _new_context(ca_file: Path | str | None, verify: bool) -> ssl.SSLContext:
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
