"""IMAP IDLE (RFC 2177): wait on a folder and wake the source's poll when new mail arrives.

The watcher holds its own connection (the poll opens another); it never fetches or changes mail.
An IDLE is ended with ``DONE`` and re-issued after ``idle_renew`` (25 minutes by default; RFC 2177
lets a server drop an IDLE after 30). Any drop (a timeout, a server restart, ``BYE``) reconnects
with a growing pause (1 s up to a minute) and wakes the poll once connected again, since mail may
have arrived in between. A server without IDLE is simply polled on the source's schedule.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from popflow import PopflowError, ServerMisbehaved, SourceConnectionError
from popflow_imap.session import ImapSession

if TYPE_CHECKING:
    from popflow_imap.source import ImapSource

log = logging.getLogger("popflow_imap.idle")

MAX_BACKOFF = 60.0
SLICE = 0.5
"""Longest wait on the socket before the stop signal and the renewal deadline are looked at again."""
MAX_AFTER_DONE = 10_000
"""Untagged responses accepted between ``DONE`` and the IDLE's completion."""


def watch_folder(source: ImapSource, folder: str, wake: Callable[[], None], stop: threading.Event) -> None:
    """Until ``stop`` is set: IDLE on ``folder`` and call ``wake()`` whenever new mail may be there."""
    pause = 1.0
    first = True
    while not stop.is_set():
        session = source.session()
        try:
            session.open(select=False)
            if not session.has("IDLE"):
                log.info("%s: the server has no IDLE; %s is polled on its schedule", source.name, folder)
                return
            state = session.select(folder)
            log.info("%s: watching %s with IDLE", source.name, folder)
            if not first:
                wake()  # mail may have arrived while the connection was down
            first = False
            pause = 1.0
            exists = state.exists
            while not stop.is_set():
                exists = idle_once(session, exists, wake, stop, source.config.idle_renew)
        except PopflowError as exc:
            if stop.is_set():
                break
            log.warning("%s: IDLE on %s: %s; reconnecting in %.0fs", source.name, folder, exc, pause)
        except Exception:  # a bug must not end the watching silently
            log.exception("%s: IDLE on %s failed; reconnecting in %.0fs", source.name, folder, pause)
        finally:
            session.close(commit=not session.broken)
        stop.wait(pause)
        pause = min(pause * 2, MAX_BACKOFF)


def idle_once(session: ImapSession, exists: int, wake: Callable[[], None], stop: threading.Event,
              renew: float) -> int:
    """One IDLE, ended by ``DONE`` at ``renew`` seconds or on stop; returns the folder's message count.

    ``wake()`` is called once per burst of responses that grew the count (not once per ``EXISTS``:
    a server sending thousands of them at once wakes the poll once), when nothing more is buffered.
    """
    wire = session.wire
    count = _Counter(exists)
    tag = wire.command("IDLE")
    reply = wire.read_reply()
    while reply.tag == "*":  # responses queued before the server took the command
        count.see(reply)
        reply = wire.read_reply()
    if reply.tag != "+":
        raise SourceConnectionError(f"{session.label}: IDLE refused: {reply.message[:200]}")
    until = time.monotonic() + renew
    while not stop.is_set() and time.monotonic() < until:
        if count.grown and not wire.buffered:
            count.wake(wake)
        if not _readable(wire.sock, wire.buffered, SLICE):
            continue
        reply = wire.read_reply()
        if reply.tag == "*" and reply.status == "BYE":
            raise SourceConnectionError(f"{session.label}: the server ended the IDLE: {reply.message[:200]}")
        count.see(reply)
    wire.send_line(b"DONE")
    for _ in range(MAX_AFTER_DONE):
        reply = wire.read_reply()
        if reply.tag == tag:
            if count.grown:
                count.wake(wake)
            return count.exists
        count.see(reply)
    wire.close()
    raise ServerMisbehaved(f"{session.label}: no end to the responses after DONE; connection dropped")


class _Counter:
    """Tracks ``* N EXISTS`` / ``* N EXPUNGE``; notes growth (new mail, not our own expunges)."""

    def __init__(self, exists: int) -> None:
        self.exists = exists
        self.grown = False

    def see(self, reply: object) -> None:
        values = getattr(reply, "values", [])
        if len(values) >= 2 and isinstance(values[0], int) and isinstance(values[1], str):
            word = values[1].upper()
            if word == "EXISTS":
                self.grown = self.grown or values[0] > self.exists
                self.exists = int(values[0])
            elif word == "EXPUNGE":
                self.exists = max(0, self.exists - 1)

    def wake(self, wake: Callable[[], None]) -> None:
        self.grown = False
        wake()


def _readable(sock: socket.socket, buffered: int, seconds: float) -> bool:
    if buffered or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
        return True
    try:
        ready, _, _ = select.select([sock], [], [], seconds)
    except (OSError, ValueError) as exc:
        raise SourceConnectionError(f"the IDLE connection failed: {exc}") from None
    return bool(ready)
