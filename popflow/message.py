"""The message model that flows through the pipeline and into sinks.

Headers are parsed eagerly (routing and filters need them); ``text``, ``html`` and ``attachments``
are filled on first access by the parser's body loader, so a pipeline that never looks at a body
never pays for parsing it. The raw bytes stay the source of truth and are available as
:attr:`Message.raw`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, computed_field

from popflow.raw import RawMessage


class Address(BaseModel):
    """One mailbox: display name and address (either may be empty on broken mail)."""

    name: str = ""
    address: str = ""

    def __str__(self) -> str:
        if self.name:
            return f"{self.name} <{self.address}>"
        return self.address


class Attachment(BaseModel):
    """An attachment's metadata; its decoded bytes come from :meth:`content`."""

    filename: str
    """A safe file name made from the message's name for it (never a path)."""
    original_filename: str | None = None
    content_type: str = "application/octet-stream"
    size: int = 0
    sha256: str = ""
    content_id: str | None = None
    inline: bool = False

    _content_loader: Callable[[], bytes] | None = PrivateAttr(default=None)
    _chunk_loader: Callable[[], Iterator[bytes]] | None = PrivateAttr(default=None)

    def content(self) -> bytes:
        """The decoded bytes of the attachment, all at once (see :meth:`chunks` for large ones)."""
        if self._content_loader is not None:
            return self._content_loader()
        if self._chunk_loader is not None:
            return b"".join(self._chunk_loader())
        return b""

    def chunks(self) -> Iterator[bytes]:
        """The decoded bytes in pieces of at most about 1 MB.

        A message held in memory (up to 1 MB) keeps the bytes its parse decoded; a spooled one's
        are decoded anew from the spool file on each call. Memory stays bounded whatever the
        attachment's size: use it to write, hash or scan a large attachment instead of :meth:`content`.
        """
        if self._chunk_loader is not None:
            yield from self._chunk_loader()
        else:
            yield self.content()


class Body(BaseModel):
    """What the body parser produces: text, HTML, attachments and any defects it met."""

    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = Field(default_factory=list)
    defects: list[str] = Field(default_factory=list)


class Message(BaseModel):
    """A mail message: header fields, lazily parsed body, tags and plugin ``meta``.

    Plugins read and set fields freely; ``tags`` and ``meta`` are theirs to enrich. The raw bytes
    are :attr:`raw` (``message.raw.read()``), never re-encoded.
    """

    model_config = ConfigDict(validate_assignment=False, arbitrary_types_allowed=True)

    source: str = ""
    uidl: str = ""
    size: int = 0
    sha256: str = ""
    message_id: str | None = None
    subject: str | None = None
    from_: Address | None = None
    to: list[Address] = Field(default_factory=list)
    cc: list[Address] = Field(default_factory=list)
    reply_to: list[Address] = Field(default_factory=list)
    date: datetime | None = None
    headers: list[tuple[str, str]] = Field(default_factory=list)
    defects: list[str] = Field(default_factory=list)
    tags: set[str] = Field(default_factory=set)
    meta: dict[str, Any] = Field(default_factory=dict)

    _raw: RawMessage | None = PrivateAttr(default=None)
    _body: Body | None = PrivateAttr(default=None)
    _body_loader: Callable[[], Body] | None = PrivateAttr(default=None)

    # -- raw bytes -------------------------------------------------------------------------
    # These read pydantic's dict of private attributes directly: ``self._raw`` goes through
    # BaseModel.__getattr__, about 2 us per access, and the pipeline and sinks read it per message.
    @property
    def raw(self) -> RawMessage:
        """The raw bytes as received (in memory or spooled)."""
        raw: RawMessage | None = self.__pydantic_private__["_raw"] if self.__pydantic_private__ else None
        if raw is None:
            raise ValueError("this message has no raw bytes attached")
        return raw

    @property
    def has_raw(self) -> bool:
        """Whether raw bytes are attached."""
        private = self.__pydantic_private__
        return private is not None and private.get("_raw") is not None

    def attach_raw(self, raw: RawMessage) -> None:
        """Attach the raw bytes and fill ``size`` and ``sha256`` from them."""
        self._raw = raw
        self.size = raw.size
        self.sha256 = raw.sha256

    def set_body_loader(self, loader: Callable[[], Body]) -> None:
        """Install the callable that parses the body on first access."""
        self._body_loader = loader
        self._body = None

    # -- lazily parsed body ------------------------------------------------------------------
    def _loaded_body(self) -> Body:
        if self._body is None:
            body = self._body_loader() if self._body_loader is not None else Body()
            self._body = body
            for defect in body.defects:
                if defect not in self.defects:
                    self.defects.append(defect)
        return self._body

    def load_body(self) -> Message:
        """Parse the body now (sinks call this before serialising every field)."""
        self._loaded_body()
        return self

    @property
    def body_loaded(self) -> bool:
        """Whether the body has been parsed yet."""
        return self._body is not None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def text(self) -> str | None:
        """The plain-text body (decoded), or None."""
        return self._loaded_body().text

    @text.setter
    def text(self, value: str | None) -> None:
        self._loaded_body().text = value

    @computed_field  # type: ignore[prop-decorator]
    @property
    def html(self) -> str | None:
        """The HTML body (decoded), or None."""
        return self._loaded_body().html

    @html.setter
    def html(self, value: str | None) -> None:
        self._loaded_body().html = value

    @computed_field  # type: ignore[prop-decorator]
    @property
    def attachments(self) -> list[Attachment]:
        """The attachments, with safe file names; bytes via ``attachment.content()``."""
        return self._loaded_body().attachments

    # -- conveniences for plugins ------------------------------------------------------------
    def header(self, name: str, default: str | None = None) -> str | None:
        """The first header called ``name`` (case-insensitive), decoded, or ``default``."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return default

    def header_all(self, name: str) -> list[str]:
        """Every header called ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def add_defect(self, defect: str) -> None:
        """Record something the parser or a stage had to repair or could not read."""
        if defect not in self.defects:
            self.defects.append(defect)

    def summary(self) -> dict[str, Any]:
        """Header-level fields as JSON-ready data (no body, no raw bytes)."""
        return self.model_dump(
            mode="json", exclude={"text", "html", "attachments", "headers"}
        )

    def __repr__(self) -> str:
        return f"<Message {self.source}/{self.uidl} {self.size} bytes subject={self.subject!r}>"
