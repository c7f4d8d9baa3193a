"""The folder sink: Maildir and eml layouts, idempotency, durability, hostile names, errors."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from popflow.context import RuntimeContext
from popflow.errors import RetryableError
from popflow.message import Attachment, Body, Message
from popflow.plugins import make_plugin_manager
from popflow.raw import RawMessage
from popflow.sinks import files as files_module
from popflow.sinks.folder import STALE_TMP_SECONDS, FolderConfig, FolderSink, delivery_key

RAW = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody \xff\xfe bytes\r\n.\r\n"


def make_sink(tmp_path: Path, **options: Any) -> FolderSink:
    """A folder sink whose relative ``path`` resolves against ``tmp_path``."""
    options.setdefault("path", "mail")
    config = FolderConfig.model_validate({"type": "folder", **options})
    return FolderSink("archive", config, RuntimeContext(data_dir=tmp_path / "data", base_dir=tmp_path))


def make_message(uidl: str = "UID1", raw: RawMessage | None = None, source: str = "support",
                 attachments: list[Attachment] | None = None, date: datetime | None = None) -> Message:
    """A message with raw bytes and a body loader, as the parser would produce."""
    message = Message(source=source, uidl=uidl, subject="hi", date=date)
    message.attach_raw(raw or RawMessage.from_bytes(RAW))
    body = Body(text="body", attachments=attachments or [])
    message.set_body_loader(lambda: body)
    return message


def attachment(filename: str, content: bytes) -> Attachment:
    """An attachment whose bytes come from a loader, like the parser's."""
    item = Attachment(filename=filename, size=len(content))
    item._content_loader = lambda: content
    return item


def files_under(path: Path) -> list[Path]:
    """Every regular file under ``path``, sorted."""
    return sorted(p for p in path.rglob("*") if p.is_file())


# -- maildir ---------------------------------------------------------------------------------
def test_maildir_delivers_byte_for_byte(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    sink.open()
    sink.write(make_message())
    sink.commit()
    root = tmp_path / "mail"
    assert sorted(p.name for p in root.iterdir()) == ["cur", "new", "tmp"]
    delivered = list((root / "new").iterdir())
    assert len(delivered) == 1
    assert delivered[0].read_bytes() == RAW
    assert delivered[0].name == f"{delivery_key('support', 'UID1')}.popflow"
    assert list((root / "tmp").iterdir()) == []
    sink.close()


def test_maildir_streams_a_spooled_message(tmp_path: Path) -> None:
    chunks = [os.urandom(1000) for _ in range(50)]
    raw = RawMessage.from_chunks(iter(chunks), spool_dir=tmp_path / "spool", threshold=100)
    assert raw.spooled
    sink = make_sink(tmp_path)
    sink.write(make_message(raw=raw))
    sink.commit()
    (delivered,) = (tmp_path / "mail" / "new").iterdir()
    assert delivered.read_bytes() == b"".join(chunks)


def test_maildir_second_write_is_a_no_op(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    sink.write(make_message())
    sink.commit()
    sink.write(make_message())
    sink.write(make_message(uidl="UID2"))
    sink.commit()
    assert len(list((tmp_path / "mail" / "new").iterdir())) == 2


def test_maildir_detects_message_moved_to_cur_after_reopen(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    sink.write(make_message())
    sink.commit()
    sink.close()
    root = tmp_path / "mail"
    (moved,) = (root / "new").iterdir()
    moved.rename(root / "cur" / f"{moved.name}:2,S")  # what a MUA does when the mail is read

    again = make_sink(tmp_path)
    again.open()
    again.write(make_message())
    again.commit()
    assert list((root / "new").iterdir()) == []
    assert [p.name for p in (root / "cur").iterdir()] == [f"{moved.name}:2,S"]


def test_maildir_same_uidl_other_source_is_another_message(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    sink.write(make_message(source="a"))
    sink.write(make_message(source="b"))
    sink.commit()
    assert len(list((tmp_path / "mail" / "new").iterdir())) == 2


def test_maildir_without_uidl_does_not_collapse_messages(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    sink.write(make_message(uidl="", raw=RawMessage.from_bytes(b"one")))
    sink.write(make_message(uidl="", raw=RawMessage.from_bytes(b"two")))
    sink.commit()
    contents = sorted(p.read_bytes() for p in (tmp_path / "mail" / "new").iterdir())
    assert contents == [b"one", b"two"]


def test_stale_tmp_files_are_cleaned_at_open(tmp_path: Path) -> None:
    make_sink(tmp_path).open()
    tmp = tmp_path / "mail" / "tmp"
    stale, fresh = tmp / "1.P1Q1.crashed", tmp / "2.P1Q2.in-progress"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    old = time.time() - 37 * 3600
    os.utime(stale, (old, old))
    make_sink(tmp_path).open()
    assert sorted(p.name for p in tmp.iterdir()) == [fresh.name]


def test_commit_fsyncs_new_dir_once_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(files_module.os, "fsync", counting_fsync)
    sink = make_sink(tmp_path, group_commit=False)
    sink.open()
    synced.clear()
    for index in range(5):
        sink.write(make_message(uidl=f"U{index}"))
    assert len(synced) == 5  # one per file: data is on disk before the rename into new/
    synced.clear()
    sink.commit()
    assert len(synced) >= 1  # the directory entries, once for the batch
    synced.clear()
    sink.commit()
    assert synced == []  # nothing written, nothing to sync


def test_group_commit_publishes_only_at_commit(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, group_commit=True)
    sink.write(make_message(uidl="U1"))
    sink.write(make_message(uidl="U2"))
    sink.write(make_message(uidl="U1"))  # already pending: no second copy
    root = tmp_path / "mail"
    assert list((root / "new").iterdir()) == []
    assert len(list((root / "tmp").iterdir())) == 2
    sink.commit()
    assert sorted(p.read_bytes() for p in (root / "new").iterdir()) == [RAW, RAW]
    assert list((root / "tmp").iterdir()) == []


def test_group_commit_flushes_a_batch_with_one_syncfs_before_any_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if files_module._SYNCFS is None:
        pytest.skip("no syncfs(2) on this platform: group commit uses background fsyncs")
    events: list[str] = []
    real_syncfs, real_fsync, real_rename = files_module._SYNCFS, os.fsync, os.rename

    def syncfs(fd: int) -> None:
        events.append("syncfs")
        real_syncfs(fd)

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def rename(src: Any, dst: Any) -> None:
        events.append("rename")
        real_rename(src, dst)

    monkeypatch.setattr(files_module, "_SYNCFS", syncfs)
    monkeypatch.setattr(files_module.os, "fsync", fsync)
    monkeypatch.setattr(files_module.os, "rename", rename)
    sink = make_sink(tmp_path, group_commit=True)
    sink.open()
    events.clear()
    for index in range(20):
        sink.write(make_message(uidl=f"U{index}"))
    assert events == []  # nothing flushed per message
    sink.commit()
    assert events[0] == "syncfs" and events.count("syncfs") == 1  # every byte on disk before the first rename
    assert events[1:21] == ["rename"] * 20
    assert "fsync" in events[21:]  # then the directory entries
    assert len(list((tmp_path / "mail" / "new").iterdir())) == 20


def test_group_commit_is_the_default_for_maildir_only() -> None:
    maildir = FolderConfig.model_validate({"type": "folder", "path": "x"})
    eml = FolderConfig.model_validate({"type": "folder", "path": "x", "layout": "eml"})
    per_file = FolderConfig.model_validate({"type": "folder", "path": "x", "group_commit": False})
    assert (maildir.group_commit, eml.group_commit, per_file.group_commit) == (True, False, False)


def test_group_commit_without_syncfs_fsyncs_each_file_and_renames_at_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def rename(src: str, dst: str) -> None:
        events.append("rename")
        real_rename(src, dst)

    sink = make_sink(tmp_path)
    sink.open()
    monkeypatch.setattr(files_module, "_SYNCFS", None)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    sink.write(make_message(uidl="U1"))
    sink.write(make_message(uidl="U2"))
    assert events == ["fsync-file", "fsync-file"]  # each file on disk while still in tmp/
    assert list((tmp_path / "mail" / "new").iterdir()) == []
    sink.commit()
    assert events[2:4] == ["rename", "rename"]
    assert len(list((tmp_path / "mail" / "new").iterdir())) == 2


def test_group_commit_rollback_forgets_the_batch(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, group_commit=True)
    sink.write(make_message(uidl="U1"))
    sink.rollback()
    root = tmp_path / "mail"
    assert list((root / "tmp").iterdir()) == []
    sink.write(make_message(uidl="U1"))  # written again after the rollback
    sink.commit()
    assert len(list((root / "new").iterdir())) == 1


def test_group_commit_failure_then_rollback_then_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = make_sink(tmp_path, group_commit=True)
    sink.write(make_message(uidl="U1"))
    sink.write(make_message(uidl="U2"))
    real_rename = os.rename
    calls: list[str] = []

    def rename_fails_second_time(src: Any, dst: Any) -> None:
        calls.append(str(dst))
        if len(calls) == 2:
            raise PermissionError(13, "Permission denied")
        real_rename(src, dst)

    monkeypatch.setattr(files_module.os, "rename", rename_fails_second_time)
    with pytest.raises(RetryableError, match="Permission denied"):
        sink.commit()
    root = tmp_path / "mail"
    assert len(list((root / "new").iterdir())) == 1  # the first one made it, complete
    sink.rollback()
    assert list((root / "tmp").iterdir()) == []
    for uidl in ("U1", "U2"):  # what the framework's one-by-one retry does
        sink.write(make_message(uidl=uidl))
        sink.commit()
    assert sorted(p.read_bytes() for p in (root / "new").iterdir()) == [RAW, RAW]


def test_failed_write_leaves_nothing_visible(tmp_path: Path) -> None:
    def broken_chunks() -> Any:
        yield b"From: a@example.com\r\n"
        raise OSError(28, "No space left on device")

    class BrokenRaw(RawMessage):
        def iter_chunks(self, size: int = 0) -> Any:
            return broken_chunks()

    sink = make_sink(tmp_path)
    with pytest.raises(RetryableError, match="No space left on device"):
        sink.write(make_message(raw=BrokenRaw(b"x", sha256="0" * 64)))
    root = tmp_path / "mail"
    assert list((root / "new").iterdir()) == []
    assert list((root / "tmp").iterdir()) == []
    sink.write(make_message())  # not marked as delivered: the retry writes it
    sink.commit()
    assert len(list((root / "new").iterdir())) == 1


# -- eml -------------------------------------------------------------------------------------
HOSTILE = ["../../etc/passwd", "/abs/evil.sh", "C:\\Windows\\evil.dll", "CON", "con.txt", "..", "",
           "a\x00b.txt", "report.pdf", "REPORT.PDF", "x" * 5000 + ".bin", "\u202egnp.exe"]


def test_eml_layout_with_hostile_attachment_names(tmp_path: Path) -> None:
    date = datetime(2024, 3, 9, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # 2024-03-10 in UTC
    attachments = [attachment(name, f"content {index}".encode()) for index, name in enumerate(HOSTILE)]
    sink = make_sink(tmp_path, layout="eml", attachments=True)
    sink.write(make_message(attachments=attachments, date=date))
    sink.commit()

    root = (tmp_path / "mail").resolve()
    key = delivery_key("support", "UID1")
    month = root / "support" / "2024" / "03"
    assert (month / f"{key}.eml").read_bytes() == RAW
    record = json.loads((month / f"{key}.json").read_text())
    assert record["uidl"] == "UID1" and record["subject"] == "hi" and record["text"] == "body"
    assert record["popflow"]["id"] == key

    saved = files_under(month / key)
    assert len(saved) == len(HOSTILE)
    names = [p.name for p in saved]
    assert len({name.casefold() for name in names}) == len(names)
    for path in files_under(root):
        assert path.resolve().is_relative_to(root)
        assert len(path.name.encode()) <= 255
    assert not any(p.name.startswith(".") for p in files_under(root))  # no temp files left
    # Every attachment's bytes are where the JSON says they are.
    for index, entry in enumerate(record["attachments"]):
        assert (month / entry["saved_as"]).read_bytes() == f"content {index}".encode()
    assert {"_CON", "_con.txt", "passwd", "evil.dll", "report.pdf", "REPORT (2).PDF"} <= set(names)


def test_eml_without_attachments_option_saves_only_metadata(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, layout="eml")
    sink.write(make_message(attachments=[attachment("a.pdf", b"%PDF")], date=datetime(2023, 1, 2)))
    sink.commit()
    month = tmp_path / "mail" / "support" / "2023" / "01"
    key = delivery_key("support", "UID1")
    assert sorted(p.name for p in month.iterdir()) == [f"{key}.eml", f"{key}.json"]
    record = json.loads((month / f"{key}.json").read_text())
    assert record["attachments"][0]["filename"] == "a.pdf"
    assert "saved_as" not in record["attachments"][0]


def test_eml_is_idempotent(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, layout="eml")
    sink.write(make_message(date=datetime(2023, 1, 2)))
    sink.commit()
    (json_file,) = (tmp_path / "mail").rglob("*.json")
    before = json_file.read_bytes()
    sink.write(make_message(date=datetime(2023, 1, 2)))
    sink.commit()
    assert json_file.read_bytes() == before
    assert len(files_under(tmp_path / "mail")) == 2


def test_eml_without_date_is_idempotent_across_months(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, layout="eml")
    key = delivery_key("support", "UID1")
    earlier = tmp_path / "mail" / "support" / "1999" / "12"
    earlier.mkdir(parents=True)
    (earlier / f"{key}.eml").write_bytes(RAW)
    (earlier / f"{key}.json").write_text("{}")  # delivered in an earlier month
    sink.write(make_message(date=None))
    sink.commit()
    assert len(files_under(tmp_path / "mail")) == 2


def test_eml_completes_an_interrupted_attempt(tmp_path: Path) -> None:
    key = delivery_key("support", "UID1")
    month = tmp_path / "mail" / "support" / "2023" / "01"
    month.mkdir(parents=True)
    (month / f"{key}.eml").write_bytes(b"partial")  # an attempt that died before its .json
    leftover = month / f".{key}.json.0123456789abcdef.popflow-tmp"
    leftover.write_bytes(b"{")
    old = time.time() - STALE_TMP_SECONDS - 60
    os.utime(leftover, (old, old))  # temp names are random: a leftover is swept once it is stale
    sink = make_sink(tmp_path, layout="eml")
    sink.write(make_message(date=datetime(2023, 1, 2)))
    sink.commit()
    assert (month / f"{key}.eml").read_bytes() == RAW
    assert json.loads((month / f"{key}.json").read_text())["uidl"] == "UID1"
    assert sorted(p.name for p in month.iterdir()) == [f"{key}.eml", f"{key}.json"]


def test_eml_date_at_the_edge_of_the_calendar(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, layout="eml")
    sink.write(make_message(date=datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))))
    sink.commit()
    assert len(files_under(tmp_path / "mail" / "support" / "0001" / "01")) == 2


def test_eml_source_name_is_made_safe(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, layout="eml")
    sink.write(make_message(source="../../outside", date=datetime(2023, 1, 2)))
    sink.commit()
    root = (tmp_path / "mail").resolve()
    assert all(p.resolve().is_relative_to(root) for p in files_under(tmp_path))
    assert (root / "outside" / "2023" / "01").is_dir()


# -- errors, config, registration ------------------------------------------------------------
@pytest.mark.parametrize("layout", ["maildir", "eml"])
def test_unwritable_folder_is_retryable(tmp_path: Path, layout: str) -> None:
    (tmp_path / "afile").write_text("not a folder")
    sink = make_sink(tmp_path, path="afile/mail", layout=layout)
    with pytest.raises(RetryableError, match="afile/mail"):
        sink.write(make_message(date=datetime(2023, 1, 2)))
    with pytest.raises(RetryableError):
        sink.check()


def test_path_that_is_a_file_is_retryable(tmp_path: Path) -> None:
    (tmp_path / "mail").write_text("not a folder")
    with pytest.raises(RetryableError, match="not a directory"):
        make_sink(tmp_path, layout="eml").open()


def test_check_and_describe(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, path="./mail")
    assert sink.describe() == "folder maildir mail"
    assert "writable maildir" in sink.check()
    assert (tmp_path / "mail" / "new").is_dir()
    assert list((tmp_path / "mail" / "tmp").iterdir()) == []
    eml = make_sink(tmp_path, path="eml", layout="eml", attachments=True)
    assert eml.describe() == "folder eml eml +attachments"
    assert "writable" in eml.check()


def test_config_rejects_eml_only_options_on_maildir() -> None:
    with pytest.raises(ValidationError, match="layout: eml"):
        FolderConfig.model_validate({"type": "folder", "path": "x", "attachments": True})
    with pytest.raises(ValidationError, match="layout: maildir"):
        FolderConfig.model_validate({"type": "folder", "path": "x", "layout": "eml", "group_commit": True})
    with pytest.raises(ValidationError):
        FolderConfig.model_validate({"type": "folder", "path": "x", "layout": "mbox"})


def test_registers_folder_type() -> None:
    pm = make_plugin_manager(load_entry_points=False)
    assert pm.registry.sink_type("folder") is FolderSink


def test_open_removes_tmp_leftovers_of_a_dead_writer_only(tmp_path: Path) -> None:
    import subprocess
    dead = subprocess.Popen(["true"])
    dead.wait()
    tmp = tmp_path / "mail" / "tmp"
    tmp.mkdir(parents=True)
    key = "0" * 32
    gone = tmp / f"{time.time_ns()}.P{dead.pid}Q1R{'a' * 12}.{key}"
    mine = tmp / f"{time.time_ns()}.P{os.getpid()}Q2R{'b' * 12}.{key}"
    foreign = tmp / "1234.other-mua.tmp"
    for path in (gone, mine, foreign):
        path.write_bytes(b"x")
    make_sink(tmp_path).open()
    assert sorted(p.name for p in tmp.iterdir()) == sorted([mine.name, foreign.name])
