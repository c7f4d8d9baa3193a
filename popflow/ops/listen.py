"""``--http ADDR`` / ``http: {listen: ADDR}``: where the metrics and status server listens.

Loopback unless asked: a bare port (``9464`` or ``:9464``) means ``127.0.0.1``; listening on every
interface takes an explicit ``0.0.0.0:9464`` or ``[::]:9464``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464
"""The usual port of an application's own Prometheus endpoint (OpenTelemetry's exporter default)."""


@dataclass(frozen=True)
class ListenAddress:
    """A host (name or IP literal, no brackets) and a TCP port (0: any free port)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """True for 127.0.0.0/8, ::1 and ``localhost``."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_listen(value: str | int) -> ListenAddress:
    """``9464``, ``:9464``, ``127.0.0.1:9464``, ``localhost:9464``, ``[::1]:9464`` → a :class:`ListenAddress`."""
    text = str(value).strip()
    host, port_text = DEFAULT_HOST, text
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ValueError(f"{text!r}: write an IPv6 address as [::1]:9464")
        host, port_text = text[1:end], text[end + 2:]
    elif ":" in text:
        given, port_text = text.rsplit(":", 1)
        host = given or DEFAULT_HOST
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address as [::1]:9464")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT with a port from 0 to 65535 (e.g. 127.0.0.1:{DEFAULT_PORT})")
    if not host or any(ch.isspace() or ch in "/?#@" for ch in host):
        raise ValueError(f"{text!r}: not a host name or IP address")
    return ListenAddress(host, int(port_text))
