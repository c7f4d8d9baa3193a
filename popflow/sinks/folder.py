"""The ``folder`` sink: raw messages into a Maildir, or ``.eml`` files with JSON beside them.

One sink type, ``type: folder``, two layouts, each its own class over the shared atomic-file
helpers of :mod:`popflow.sinks.files`:

* ``layout: maildir`` (the default): :class:`popflow.sinks.maildir.MaildirSink`, the Maildir
  protocol with group commit (one syncfs(2) per batch before the renames into ``new/``);
* ``layout: eml``: :class:`popflow.sinks.eml.EmlSink`, ``<source>/<yyyy>/<mm>/<id>.eml`` with the
  attachments under ``<id>/`` and ``<id>.json`` last.

Both name files after a hash of ``(source, uidl)`` (:func:`delivery_key`), which makes them
idempotent. ``FolderSink(name, config, context)`` builds the class the layout names.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import model_validator

from popflow.config import SinkSettings
from popflow.context import RuntimeContext
from popflow.sinks.base import Sink
from popflow.sinks.files import STALE_TMP_SECONDS, AtomicFiles

__all__ = ["STALE_TMP_SECONDS", "FolderConfig", "FolderSink", "delivery_key"]

_probes = itertools.count(1)


class FolderConfig(SinkSettings):
    """Options of ``type: folder``."""

    path: Path
    """The folder; a relative path is relative to the config file's folder."""
    layout: Literal["maildir", "eml"] = "maildir"
    attachments: bool = False
    """``layout: eml`` only: also save each attachment under ``<id>/``."""
    fsync: bool = True
    """Flush files and folders to disk; turn off only for scratch folders."""
    group_commit: bool | None = None
    """``layout: maildir`` only: fsync and publish a batch at ``commit()`` instead of every write.

    Unset means on for ``maildir`` (the guarantee is the same: one syncfs(2) before any rename) and
    off for ``eml``."""

    @model_validator(mode="after")
    def _eml_only_options(self) -> FolderConfig:
        if self.layout != "eml" and self.attachments:
            raise ValueError("'attachments: true' needs 'layout: eml'")
        if self.layout != "maildir" and self.group_commit:
            raise ValueError("'group_commit: true' needs 'layout: maildir'")
        if self.group_commit is None:
            self.group_commit = self.layout == "maildir"
        return self


def delivery_key(source: str, uidl: str, sha256: str = "") -> str:
    """32 hex characters naming a message's files, derived from ``(source, uidl)``.

    A message without a UIDL falls back to its content hash, so two such messages never collapse
    into one file.
    """
    identity = f"{source}\0{uidl}" if uidl else f"{source}\0sha256:{sha256}"
    return hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class FolderSink(Sink):
    """Deliver messages into a folder; constructing one gives the class of its ``layout``."""

    config_model = FolderConfig
    config: FolderConfig

    def __new__(cls, name: str, config: FolderConfig, context: RuntimeContext) -> FolderSink:
        if cls is FolderSink:
            from popflow.sinks.eml import EmlSink
            from popflow.sinks.maildir import MaildirSink

            cls = MaildirSink if config.layout == "maildir" else EmlSink
        return super().__new__(cls)

    def __init__(self, name: str, config: FolderConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self.root = context.resolve(config.path)
        self.files = AtomicFiles(name, config.fsync)
        self._opened = False

    def describe(self) -> str:
        """E.g. ``folder maildir ./mail``."""
        extra = " +attachments" if self.config.attachments else ""
        return f"folder {self.config.layout} {self.config.path}{extra}"

    def _probe(self, folder: Path) -> None:
        """Create and remove a file in ``folder`` (for ``check``)."""
        probe = folder / f".popflow-check.{os.getpid()}.{next(_probes)}.{secrets.token_hex(6)}"
        self.files.write_file(probe, [b"ok\n"], sync=False, in_place=True)
        probe.unlink()

