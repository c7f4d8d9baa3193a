"""What a source type provides: a session that lists, retrieves and deletes messages.

The poller drives a :class:`SourceSession` in this order: ``list_messages`` → one
``retrieve_many`` over every message to fetch, taken a batch at a time → (deliver, record in the
ledger) → ``delete`` (or ``keep``, with ``keep_on_server``) of that batch, while the
``retrieve_many`` generator is suspended → … → ``close(commit=True)``. A session may run its
retrievals ahead of the consumer, as long as ``delete`` then works (POP3 parks the replies in flight).
A POP3 server expunges deleted messages only at QUIT, which ``close(commit=True)`` sends;
``close(commit=False)`` drops the connection so nothing is expunged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from popflow.config import SourceSettings
from popflow.context import RuntimeContext
from popflow.errors import DeliveryError
from popflow.raw import RawMessage


@dataclass(frozen=True)
class Listing:
    """One message on the server: its number in this session, its unique id and its size.

    ``uidl`` is the server's id as exact printable text (:func:`popflow.sources.keys.uidl_text`).
    The poller hands each message on under its ledger key, which is that text unless another
    message already used it (see docs/delivery.md); ``server_uidl`` then keeps the server's text.
    ``problem`` marks an entry the server listed unusably (an impossible size, no UIDL): the
    poller skips that message with the reason recorded and leaves it on the server.
    """

    number: int
    uidl: str
    size: int
    problem: str | None = None
    server_uidl: str = ""

    @property
    def server_id(self) -> str:
        """The server's UIDL text (``uidl`` before the poller gave the message its ledger key)."""
        return self.server_uidl or self.uidl


@dataclass
class SessionInfo:
    """What a login found, for logs and ``popflow check --connect``."""

    message_count: int = 0
    total_size: int = 0
    capabilities: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class SourceSession:
    """One connected, authenticated session with a mailbox."""

    info: SessionInfo

    def list_messages(self) -> list[Listing]:
        """Every message on the server, in server order."""
        raise NotImplementedError

    def retrieve(self, listing: Listing) -> RawMessage:
        """The raw bytes of one message, exactly as stored (dot-unstuffed, nothing re-encoded)."""
        raise NotImplementedError

    def retrieve_many(self, listings: Iterable[Listing]) -> Iterator[tuple[Listing, RawMessage | DeliveryError]]:
        """Retrieve several messages in order; sessions that can pipeline override this.

        A message the server refuses to hand out (``-ERR`` on RETR) comes back as a
        :class:`~popflow.errors.DeliveryError` in place of its bytes, and the others go on;
        a failure of the connection itself raises :class:`~popflow.errors.SourceConnectionError`.
        """
        for listing in listings:
            try:
                yield listing, self.retrieve(listing)
            except DeliveryError as exc:
                yield listing, exc

    def header_digests(self, listings: Iterable[Listing]) -> dict[int, str]:
        """``{message number: header_digest(TOP n 0)}`` for the listings the server can show.

        The poller asks before it deletes a message it has not fetched in this session, to make
        sure the message is still the one the ledger remembers. A session that cannot tell returns
        ``{}``; those messages are then fetched and compared by content instead.
        """
        return {}

    def delete(self, listings: Iterable[Listing]) -> list[Listing]:
        """Mark messages for deletion (effective only after ``close(commit=True)``).

        Returns the listings whose DELE the server refused (they stay on the server).
        """
        raise NotImplementedError

    def refused_deletions(self) -> list[Listing]:
        """Deletions refused after :meth:`delete` had returned, known at the latest after ``close``.

        A session may queue DELEs behind retrievals still in flight instead of waiting for their
        replies (POP3 does); the poller asks after ``close(commit=True)`` and does not count these
        as deleted. Default: none (every refusal is in what :meth:`delete` returned).
        """
        return []

    def keep(self, listings: Iterable[Listing]) -> None:
        """With ``keep_on_server``: these messages were just handled and stay on the server.

        Called once the ledger has recorded them (never for a message that is not handled). A
        session may mark them on the server, e.g. IMAP's ``after: seen`` sets ``\\Seen``; the ledger,
        not the mark, is what keeps them from being fetched again. Default: nothing.
        """

    def close(self, commit: bool = True) -> None:
        """End the session: with ``commit`` send QUIT so deletions apply, else just disconnect."""
        raise NotImplementedError

    def __enter__(self) -> SourceSession:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(commit=exc_type is None)


class Source:
    """Base class of every source type. Register subclasses with ``popflow_register_sources``."""

    config_model: ClassVar[type[SourceSettings]] = SourceSettings
    """The pydantic model of this source type's options (extends :class:`SourceSettings`)."""

    def __init__(self, name: str, config: Any, context: RuntimeContext) -> None:
        self.name = name
        self.config = config
        self.context = context

    def connect(self) -> SourceSession:
        """Connect and authenticate; raise a :class:`~popflow.errors.SourceFatalError` subclass on failure."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for ``popflow check``; never includes secrets."""
        return type(self).__name__

    def watch(self, wake: Callable[[], None]) -> None:
        """Wait for new mail and call ``wake()`` when some may have arrived; return once ``context.stop`` is set.

        ``popflow run`` calls this in a thread of its own for each source whose type overrides it;
        every ``wake()`` polls the source as soon as possible (right after its running poll, if one
        runs), besides its regular schedule. The IMAP source IDLEs here. Default: returns at once,
        the source is polled on its schedule only.
        """

    def mailbox_identity(self) -> str:
        """What mailbox this source reads, e.g. ``pop3://user@host:995``; never includes secrets.

        The ledger remembers messages per mailbox: when a source is re-pointed to another mailbox,
        what it knew of the old one is not applied to the new one.
        """
        return f"{type(self).__name__}:{self.name}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
