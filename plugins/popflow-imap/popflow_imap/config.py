"""Options of a ``type: imap`` source.

Connection, TLS and secret keys are the POP3 source's (:class:`popflow.sources.pop3.Pop3Config`)
with IMAP's ports and mechanisms; ``folder``, ``after`` and ``idle`` are IMAP's own. ``after: seen``
is what ``keep_on_server: true`` is for POP3 (the poller records the message as kept; the session
sets ``\\Seen``), so ``keep_on_server`` is derived from it rather than set by hand.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from popflow import Duration
from popflow.sources.pop3 import Pop3Config

DEFAULT_PORTS = {"implicit": 993, "starttls": 143, "none": 143}
IDLE_RENEW = 25 * 60.0
"""RFC 2177: a server may drop an IDLE after 30 minutes; re-issue well before (29 is the limit)."""


class ImapConfig(Pop3Config):
    """Options of a ``type: imap`` source (see plugins/popflow-imap/README.md)."""

    type: str = "imap"
    auth: Literal["auto", "login", "plain", "xoauth2"] = "auto"  # type: ignore[assignment]
    folder: str | list[str] = "INBOX"
    """One folder or a list, by the server's name (e.g. ``INBOX``, ``INBOX.orders``)."""
    after: str = "delete"
    """``delete`` | ``move:FOLDER`` | ``seen``: what happens to a message once it is handled."""
    idle: bool = True
    """In ``popflow run``, wait with IMAP IDLE and poll as soon as new mail arrives."""
    idle_renew: Duration = Field(default=IDLE_RENEW, gt=0, le=29 * 60)
    """How long one IDLE may last before it is re-issued (at most 29 minutes, RFC 2177)."""
    fetch_batch: int = Field(default=50, ge=1, le=1000)
    """Messages asked for in one ``UID FETCH`` (the poller's batches are cut into these)."""

    @model_validator(mode="before")
    @classmethod
    def _imap_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in ("pipelining", "pipeline_window", "keep_on_server"):
            if key in data:
                hint = " (use after: seen)" if key == "keep_on_server" else ""
                raise ValueError(f"'{key}' is a POP3 option; not used by type: imap{hint}")
        if data.get("port") is None:
            data["port"] = DEFAULT_PORTS.get(str(data.get("tls", "implicit")), 993)
        data["keep_on_server"] = data.get("after", "delete") == "seen"
        return data

    @field_validator("folder")
    @classmethod
    def _folders_given(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not names or any(not name or any(c in name for c in "\r\n\0") for name in names):
            raise ValueError("give one folder name or a non-empty list of them (no CR, LF or NUL)")
        if len(set(names)) != len(names):
            raise ValueError("a folder is listed twice")
        return value

    @field_validator("after")
    @classmethod
    def _known_after(cls, value: str) -> str:
        if value in ("delete", "seen"):
            return value
        if value.startswith("move:") and value[5:].strip() and not any(c in value for c in "\r\n\0"):
            return value
        raise ValueError("after: must be delete, seen or move:FOLDER (e.g. move:Archive)")

    @property
    def folders(self) -> list[str]:
        """The folders to read, as a list."""
        return [self.folder] if isinstance(self.folder, str) else list(self.folder)

    @property
    def move_to(self) -> str | None:
        """The target folder of ``after: move:FOLDER``, else None."""
        return self.after[5:].strip() if self.after.startswith("move:") else None

    @property
    def server_port(self) -> int:
        """The port to connect to (IMAP's default filled in)."""
        return self.port or DEFAULT_PORTS[self.tls]
