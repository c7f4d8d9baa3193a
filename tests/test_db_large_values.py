"""Large values in the database sink: streamed in pieces (SQLite blob I/O, PostgreSQL COPY), in the batch's transaction.

A value over :data:`~popflow.sinks.db_blobs.STREAM_AT` is written in pieces of at most
:data:`~popflow.sinks.db_copy.PIECE` on SQLite and PostgreSQL (MariaDB reads it whole: see
docs/performance.md). These tests check that it arrives byte-exact, that it is part of the batch
(a failure later in the batch leaves nothing of it), and that the client never holds it whole.
"""

from __future__ import annotations

import gc
import hashlib
import os
import tracemalloc
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from psycopg import Copy

from popflow.errors import DeadLetterError, RetryableError
from popflow.message import Attachment, Message
from popflow.sinks.db_blobs import STREAM_AT
from popflow.sinks.db_copy import PIECE
from tests.support.databases import TestDatabase
from tests.test_database_sink import RAW, count, make_message, make_sink, reject_subject, rows, spooled_message

STREAMING = ("sqlite", "postgresql")


streaming_only = pytest.mark.parametrize("database", STREAMING, indirect=True)
"""Not MariaDB, which takes no pieces (a value is read whole for its statement; docs/performance.md)."""


def test_a_value_of_many_pieces_is_stored_byte_exact(database: TestDatabase, tmp_path: Path) -> None:
    # Chunks of uneven sizes, one larger than a piece, every byte value present: the hex pieces
    # and the COPY row framing must add up to exactly these bytes.
    content = bytes(range(256)) * 4096 + os.urandom(PIECE * 5 + 3)
    assert len(content) > STREAM_AT and len(content) > 4 * PIECE
    message = make_message("pieces", attachments=(("p.bin", content),), raw=b"Subject: x\r\n\r\n" + content)
    cuts = [0, 1, PIECE * 3 + 7, PIECE * 3 + 8, len(content)]
    message.attachments[0]._chunk_loader = lambda: iter(content[a:b] for a, b in pairwise(cuts))
    sink = make_sink(database, tmp_path, store_raw=True, store_attachments=True)
    sink.open()
    try:
        sink.write(message)
        sink.commit()
        stored = rows(sink.engine, sink.tables.messages)
        assert bytes(stored[0].raw) == b"Subject: x\r\n\r\n" + content
        assert [bytes(a.content) for a in rows(sink.engine, sink.tables.attachments)] == [content]
    finally:
        sink.close()


def test_streamed_values_go_with_their_batch(database: TestDatabase, tmp_path: Path) -> None:
    # A refused message after a streamed one: the batch is written again, nothing of it stays.
    content = os.urandom(2 * STREAM_AT + 5)
    big, data = spooled_message(tmp_path, content)
    sink = make_sink(database, tmp_path, store_raw=True, store_attachments=True)
    sink.open()
    reject_subject(database, "reject-me")
    try:
        sink.write(big)
        with pytest.raises(DeadLetterError):
            sink.write(make_message("bad", subject="reject-me"))
        with pytest.raises(RetryableError, match="write the batch again"):
            sink.commit()
        assert (count(database, "messages"), count(database, "attachments")) == (0, 0)
        sink.write(big)
        sink.rollback()  # a batch given up: the values leave with their rows
        assert (count(database, "messages"), count(database, "attachments")) == (0, 0)
        sink.write(big)  # in a new transaction (PostgreSQL: the temporary table made again)
        sink.write(make_message("small"))
        sink.commit()
        stored = rows(sink.engine, sink.tables.messages)
        assert [(row.uidl, bytes(row.raw)) for row in stored] == [("big-1", data), ("small", RAW)]
        assert [bytes(a.content) for a in rows(sink.engine, sink.tables.attachments)] == [content]
    finally:
        sink.close()


@streaming_only
def test_a_value_that_fails_midway_leaves_nothing_half_written(database: TestDatabase, tmp_path: Path) -> None:
    # The decoder fails after some pieces were sent: the batch must not commit a row with part of
    # its value (or without it), nor the batch's earlier messages as if all were well.

    def failing() -> Iterator[bytes]:
        yield b"x" * (3 * PIECE)
        raise ValueError("corrupt base64 in the spool")

    message = make_message("midway", attachments=(("f.bin", b"x" * (4 * STREAM_AT)),))
    sink = make_sink(database, tmp_path, store_attachments=True)
    sink.open()
    try:
        sink.write(make_message("earlier"))
        message.attachments[0]._chunk_loader = failing
        with pytest.raises(ValueError, match="corrupt base64"):
            sink.write(message)
        with pytest.raises(RetryableError, match="write the batch again"):
            sink.commit()
        assert (count(database, "messages"), count(database, "attachments")) == (0, 0)
        sink.write(make_message("earlier"))
        sink.commit()
        assert count(database, "messages") == 1
    finally:
        sink.close()


@streaming_only
def test_the_client_holds_pieces_not_the_value(database: TestDatabase, tmp_path: Path) -> None:
    # 30 MB of attachment, ~40 MB of raw message, both from the spool: the Python heap grows by a
    # few pieces, not by either value (the old path held the value and its encoding, > 60 MB).
    content = os.urandom(30 * 1024 * 1024)
    message, data = spooled_message(tmp_path, content)
    digest = hashlib.sha256(data).hexdigest()
    del data
    message.load_body()
    sink = make_sink(database, tmp_path, store_raw=True, store_attachments=True)
    sink.open()
    try:
        sink.write(make_message("warm-up"))  # connection, compiled statements, temporary table
        gc.collect()
        tracemalloc.start()
        try:
            sink.write(message)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        sink.commit()
        assert peak < 8 * 1024 * 1024, f"the write held {peak / 2**20:.1f} MB"
        stored = rows(sink.engine, sink.tables.messages)
        assert hashlib.sha256(bytes(stored[1].raw)).hexdigest() == digest
    finally:
        sink.close()


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_postgresql_copy_writes_pieces(database: TestDatabase, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # What goes to psycopg is the value in pieces of at most PIECE bytes, and nothing else but the
    # binary COPY framing (signature, flags, extension length, field count and length, trailer).
    writes: list[int] = []
    original = Copy.write

    def spy(self: Copy, buffer: bytes) -> None:
        writes.append(len(buffer))
        original(self, buffer)

    monkeypatch.setattr(Copy, "write", spy)
    content = os.urandom(3 * STREAM_AT + 1)
    message: Message = make_message("spied", attachments=(("s.bin", content),))
    attachment: Attachment = message.attachments[0]
    attachment._chunk_loader = lambda: iter([content])  # one chunk: the sink cuts it
    sink = make_sink(database, tmp_path, store_attachments=True)
    sink.open()
    try:
        sink.write(message)
        assert sink._connection is not None
        # The value passes through uncompressed (compressing it there and again in the UPDATE
        # cost +0.5 s per 40 MB raw message).
        storage = sink._connection.exec_driver_sql(
            "SELECT attstorage FROM pg_attribute WHERE attrelid = to_regclass('pg_temp.popflow_large_value') "
            "AND attname = 'value'").scalar_one()
        sink.commit()
        assert storage == "e"
        assert [bytes(a.content) for a in rows(sink.engine, sink.tables.attachments)] == [content]
    finally:
        sink.close()
    assert max(writes) <= PIECE and len(writes) >= len(content) // PIECE
    assert sum(writes) == len(content) + 11 + 4 + 4 + 2 + 4 + 2


@pytest.mark.parametrize("actual", ["longer", "shorter"])
def test_bytes_that_disagree_with_the_measured_size_are_stored_as_they_are(
        database: TestDatabase, tmp_path: Path, actual: str) -> None:
    # The size is measured by one pass of the decoder, the bytes come from another: if they ever
    # disagree, the bytes are the truth (SQLite and PostgreSQL store them whole then).
    measured = b"m" * (2 * STREAM_AT)
    truth = measured + b"extra" * 1000 if actual == "longer" else measured[:-12345]
    message = make_message("disagree", attachments=(("d.bin", measured),))
    message.attachments[0]._chunk_loader = lambda: iter([truth[:PIECE], truth[PIECE:]])
    sink = make_sink(database, tmp_path, store_attachments=True)
    sink.open()
    try:
        sink.write(message)
        sink.write(make_message("next", attachments=(("n.bin", measured),)))
        sink.commit()
        assert [bytes(a.content) for a in rows(sink.engine, sink.tables.attachments)] == [truth, measured]
    finally:
        sink.close()
