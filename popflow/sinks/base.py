"""The sink lifecycle: what a sink author writes, and what the framework owns.

A sink author writes :meth:`Sink.write` (and :meth:`Sink.commit` if it batches) and nothing else.
The framework owns retries, backoff, dead letters and the ledger.

Rules every sink follows:

* **Idempotent on (source, uidl).** Writing a message the sink already has changes nothing.
* **Durable after commit.** When :meth:`commit` returns, every message written since the last
  commit survives a crash. A sink that makes each write durable by itself leaves ``commit`` empty.
* **Errors say what to do next.** Raise :class:`~popflow.errors.RetryableError` for transient
  failures and :class:`~popflow.errors.DeadLetterError` for ones no retry can fix. Any other
  exception is treated as retryable.
"""

from __future__ import annotations

from typing import Any, ClassVar

from popflow.config import SinkSettings
from popflow.context import RuntimeContext
from popflow.message import Message


class Sink:
    """Base class of every sink type. Register subclasses with ``popflow_register_sinks``."""

    config_model: ClassVar[type[SinkSettings]] = SinkSettings
    """The pydantic model of this sink type's options (extends :class:`SinkSettings`)."""

    durable_writes: ClassVar[bool] = False
    """True when a write that returned is already durable and visible elsewhere (an HTTP POST).

    The framework then never repeats a successful write of a batch because a later one failed.
    Transactional sinks (False) may lose a batch's writes on rollback, so those are written again.
    """

    def __init__(self, name: str, config: Any, context: RuntimeContext) -> None:
        self.name = name
        self.config = config
        self.context = context

    def open(self) -> None:
        """Connect or create what the sink needs. Called once before the first write."""

    def write(self, message: Message) -> None:
        """Store one message (idempotent on ``(message.source, message.uidl)``)."""
        raise NotImplementedError

    def commit(self) -> None:
        """Make every write since the last commit durable."""

    def rollback(self) -> None:
        """Forget writes since the last commit after a failure (batching sinks)."""

    def close(self) -> None:
        """Release connections and files."""

    def check(self) -> str:
        """Open the sink and say what was found, for ``popflow check --connect``."""
        self.open()
        try:
            return "ok"
        finally:
            self.close()

    def describe(self) -> str:
        """One line for ``popflow check``; never includes secrets."""
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
