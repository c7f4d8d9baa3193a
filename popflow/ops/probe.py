"""Ask the state store something without ever hanging the HTTP server on it.

A database behind a dead route can leave a connect attempt waiting for minutes. :class:`StateProbe`
runs each question in a worker thread and waits at most ``timeout`` seconds; while an earlier
question is stuck (running longer than ``timeout``), new ones fail at once instead of piling up
threads. Questions that overlap without being stuck (a scrape during a page load) all run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import text

from popflow.redact import redact
from popflow.state import StateStore

T = TypeVar("T")


class StateUnavailable(Exception):
    """The state store did not answer; the text is safe to show (no credentials)."""


class StateProbe:
    """Bounded-time access to a :class:`StateStore` for the HTTP handlers."""

    def __init__(self, state: StateStore, timeout: float = 3.0) -> None:
        self.state = state
        self.timeout = timeout
        self._lock = threading.Lock()
        self._inflight: dict[int, float] = {}
        self._next = 0

    def ask(self, question: Callable[[StateStore], T]) -> T:
        """``question(state)``'s answer; :class:`StateUnavailable` on an error or after ``timeout``."""
        with self._lock:
            started = time.monotonic()
            oldest = min(self._inflight.values(), default=started)
            if started - oldest > self.timeout:
                raise StateUnavailable(
                    f"the state store {self.state.shown_url} has not answered for {started - oldest:.0f}s")
            ticket, self._next = self._next, self._next + 1
            self._inflight[ticket] = started
        box: dict[str, object] = {}

        def work() -> None:
            try:
                box["answer"] = question(self.state)
            except Exception as exc:
                box["error"] = exc
            finally:
                with self._lock:
                    del self._inflight[ticket]

        worker = threading.Thread(target=work, name="popflow-state-probe", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            raise StateUnavailable(f"the state store {self.state.shown_url} did not answer within {self.timeout:g}s")
        if "error" in box:
            error = box["error"]
            reason = " ".join(str(getattr(error, "orig", None) or error).split())[:300]
            raise StateUnavailable(redact(f"the state store {self.state.shown_url} did not answer: {reason}"))
        return box["answer"]  # type: ignore[return-value]

    def ping(self) -> None:
        """``SELECT 1``; raises :class:`StateUnavailable` when it does not succeed."""
        def select_one(state: StateStore) -> None:
            with state.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        self.ask(select_one)
