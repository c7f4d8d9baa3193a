"""``type: folder`` with ``layout: eml``: ``<path>/<source>/<yyyy>/<mm>/<id>.eml`` with JSON beside it.

The attachments go under ``<id>/`` (``attachments: true``, streamed through
:meth:`~popflow.message.Attachment.chunks`) and ``<id>.json`` is written last: the JSON file marks
a complete delivery, so an interrupted attempt is simply redone on retry. Every file goes through
a temp file, fsync and ``os.replace`` (:mod:`popflow.sinks.files`), so no visible file is ever
partial; the folders' fsyncs wait for :meth:`EmlSink.commit`, once per batch. Files are named
after a hash of ``(source, uidl)``: writing a message the folder holds already changes nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from popflow.context import RuntimeContext
from popflow.message import Message
from popflow.private import TEMP_SUFFIX
from popflow.record import json_value
from popflow.safenames import safe_filename, unique_name
from popflow.sinks.files import STALE_TMP_SECONDS
from popflow.sinks.folder import FolderConfig, FolderSink, delivery_key


class EmlSink(FolderSink):
    """Deliver messages as ``.eml`` files with a JSON record each (see the module docstring)."""

    def __init__(self, name: str, config: FolderConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self._swept: set[Path] = set()  # folders already cleaned of stale temp files

    def open(self) -> None:
        """Create the folder."""
        if self._opened:
            return
        self.files.makedirs(self.root)
        self._opened = True

    def write(self, message: Message) -> None:
        """Store one message; a message the folder already holds is left as it is."""
        self.open()
        key = delivery_key(message.source, message.uidl, message.sha256)
        source_dir = self.root / safe_filename(message.source, fallback="source")
        if message.date is not None:
            when = _utc(message.date)
            month_dir = source_dir / f"{when.year:04d}" / f"{when.month:02d}"
            if (month_dir / f"{key}.json").exists():
                return
        else:
            # The folder follows the delivery time, which differs on a redelivery: look everywhere.
            if any(self._month_dirs_holding(source_dir, f"{key}.json")):
                return
            now = datetime.now(UTC)
            month_dir = source_dir / f"{now.year:04d}" / f"{now.month:02d}"
        self.files.makedirs(month_dir)
        self._sweep_stale_temps(month_dir)
        self.files.write_file(month_dir / f"{key}.eml", message.raw.iter_chunks())
        message.load_body()
        saved: dict[int, str] = {}
        if self.config.attachments and message.attachments:
            saved = self._save_attachments(message, month_dir / key)
            self.files.sync_dir(month_dir / key)
        # The .json marks the delivery complete, so what it points at must be on disk first.
        self.files.sync_dir(month_dir)
        record = self._json_record(message, key, saved)
        self.files.write_file(month_dir / f"{key}.json", [record])
        self.files.dirty_dirs.add(month_dir)

    def commit(self) -> None:
        """Flush the folders this batch changed (the files were fsynced as written)."""
        self.files.sync_dirty()

    def rollback(self) -> None:
        """Nothing to undo: every file written is complete, and a retry skips it."""

    def close(self) -> None:
        """Forget which folders were swept."""
        self._opened = False
        self._swept.clear()

    def check(self) -> str:
        """Create the folder and prove it is writable."""
        self.open()
        try:
            self._probe(self.root)
            return f"writable folder {self.root}"
        finally:
            self.close()

    def _save_attachments(self, message: Message, folder: Path) -> dict[int, str]:
        """Save each attachment under a safe, unique name; returns index → path relative to root."""
        self.files.makedirs(folder)
        self._sweep_stale_temps(folder)
        taken: set[str] = set()
        saved = {}
        for index, attachment in enumerate(message.attachments):
            # The parser already made the name safe; a plugin may have changed it since.
            name = unique_name(safe_filename(attachment.filename, fallback=f"attachment-{index + 1}"), taken)
            self.files.write_file(folder / name, attachment.chunks())  # bounded memory, whatever its size
            saved[index] = f"{folder.name}/{name}"
        return saved

    def _json_record(self, message: Message, key: str, saved: dict[int, str]) -> bytes:
        meta = json_value(message.meta)  # the rule every sink follows (popflow.record)
        data: dict[str, Any] = message.model_dump(mode="json", fallback=repr, exclude={"meta"})
        data["tags"] = sorted(message.tags)
        data["meta"] = meta
        for index, path in saved.items():
            data["attachments"][index]["saved_as"] = path
        data["popflow"] = {"id": key, "eml": f"{key}.eml", "delivered_at": datetime.now(UTC).isoformat()}
        return json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"

    def _sweep_stale_temps(self, folder: Path) -> None:
        """Remove temp files a crashed attempt left in ``folder`` (once per folder per poll).

        Temp names are random, so a retry cannot reuse its predecessor's file; like a Maildir's
        tmp/, leftovers older than :data:`STALE_TMP_SECONDS` are removed (a symlink is removed,
        never followed).
        """
        if folder in self._swept:
            return
        self._swept.add(folder)
        cutoff = time.time() - STALE_TMP_SECONDS
        with suppress(OSError), os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX):
                    with suppress(OSError):
                        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(entry.path)

    @staticmethod
    def _month_dirs_holding(source_dir: Path, name: str) -> Iterator[Path]:
        for month_dir in source_dir.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]"):
            if (month_dir / name).exists():
                yield month_dir


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive one, or one at the edge of the calendar, as it is."""
    if moment.tzinfo is None:
        return moment
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # e.g. year 1 with a positive offset: real mail has such dates
        return moment
