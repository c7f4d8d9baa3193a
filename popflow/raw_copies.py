"""Raw copies of dead letters and quarantined messages in the state database (``executor: celery``).

With polls on many worker machines, a dead letter written under one worker's ``data_dir`` could
not be shown or replayed from another machine. So with ``executor: celery`` the raw bytes go into
``popflow_raw_messages`` in the shared state store instead, keyed by SHA-256 like
:class:`popflow.raw_store.MessageStore` (whose interface this class follows): every worker and every
``popflow dead-letters`` / ``popflow quarantine`` run, wherever it runs, reads the same copy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from popflow.errors import StorageError
from popflow.raw import RawMessage
from popflow.raw_store import MessageStore

if TYPE_CHECKING:
    from popflow.state import StateStore


class StateRawStore(MessageStore):
    """Raw messages by SHA-256 in the state database; ``state`` is called on first use (lazy open).

    A :class:`MessageStore` for its callers (the pipeline, replays, the CLI); no file is involved.
    """

    def __init__(self, state: Callable[[], StateStore]) -> None:
        super().__init__(Path("/nonexistent"))  # no folder: path_for() is not used by anything here
        self._state = state

    @property
    def state(self) -> StateStore:
        """The state store holding the copies."""
        return self._state()

    def path_for(self, sha256: str) -> Path:
        """There is no file: the copy is a row (see :meth:`where`)."""
        raise StorageError(f"the raw copy {sha256} is in the state store, not in a file")

    def put(self, raw: RawMessage, details: dict[str, Any] | None = None) -> Path:
        """Store raw bytes once per SHA-256 (a second copy of the same bytes is a no-op); returns where."""
        from popflow.shared_tables import raw_messages
        from popflow.timestamps import now

        if self.has(raw.sha256):
            return Path(self.where(raw.sha256))
        sidecar = json.loads(json.dumps(details, default=str)) if details is not None else None
        try:
            with self.state.transaction() as connection:
                connection.execute(insert(raw_messages).values(sha256=raw.sha256, size=raw.size,
                                                               data=raw.read(), details=sidecar, created_at=now()))
        except IntegrityError:
            pass  # another worker stored the same bytes meanwhile
        except SQLAlchemyError as exc:
            reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
            raise StorageError(f"cannot keep a copy of the message in the state store: {reason}") from exc
        return Path(self.where(raw.sha256))

    def has(self, sha256: str) -> bool:
        """Whether the bytes with this SHA-256 are stored."""
        from popflow.shared_tables import raw_messages

        with self.state.engine.connect() as connection:
            return connection.execute(select(raw_messages.c.sha256)
                                      .where(raw_messages.c.sha256 == sha256)).first() is not None

    def where(self, sha256: str) -> str:
        """Where the copy lives, for people: the table and key."""
        return f"popflow_raw_messages[{sha256}] in the state store"

    def read(self, sha256: str) -> bytes:
        """The stored raw bytes (FileNotFoundError when there are none, like the file store)."""
        from popflow.shared_tables import raw_messages

        with self.state.engine.connect() as connection:
            row = connection.execute(select(raw_messages.c.data).where(raw_messages.c.sha256 == sha256)).first()
        if row is None:
            raise FileNotFoundError(self.where(sha256))
        return bytes(row.data)

    def get(self, sha256: str) -> RawMessage:
        """The stored raw bytes as a message."""
        return RawMessage(self.read(sha256), sha256=sha256)

    def remove(self, sha256: str) -> None:
        """Delete the stored bytes."""
        from popflow.shared_tables import raw_messages

        with self.state.transaction() as connection:
            connection.execute(delete(raw_messages).where(raw_messages.c.sha256 == sha256))

    def clean_partial(self, stale_after: float = 0.0) -> int:
        """Nothing to clean: a copy is one INSERT, never half-written."""
        return 0
