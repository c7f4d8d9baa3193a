"""Faults between popflow and a real Dovecot IMAP server: the connection cut in the middle of a FETCH.

A proxy in front of Dovecot's plain IMAP port forwards the server's answer to a ``UID FETCH …
BODY.PEEK[]`` up to an exact byte and then closes both sides. Whatever arrived whole is delivered
(and only deleted by the next poll); the message cut short is not delivered in part; the next poll
delivers the rest. Every message ends in the sink exactly once and the mailbox ends empty.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from popflow_imap.session import ImapSession

from popflow.errors import SourceConnectionError
from tests.support import imap as imap_support
from tests.support.dovecot import DovecotServer, dovecot, dovecot_server  # noqa: F401
from tests.support.imap import files, write_imap_config
from tests.support.imap_proxy import ImapProxy
from tests.support.killing import maildir_ids, server_ids
from tests.support.pipeline import make_app, sample_message

imap_dovecot = imap_support.imap_dovecot
pytestmark = pytest.mark.timeout(120)

SIZES = [2_000, 300_000, 50_000, 1_500_000, 10_000, 700_000]
"""Message sizes: two over popflow's 1 MB spool threshold would be spooled; cuts land inside bodies."""


def messages() -> list[bytes]:
    out = []
    for index, size in enumerate(SIZES):
        raw = sample_message(index, attachment=bytes(range(256)) * (size // 256))
        out.append(raw)
    return out


def ids(count: int) -> Counter[str]:
    return Counter({f"<msg-{i}@example.org>": 1 for i in range(count)})


@pytest.mark.parametrize(("batch", "skip", "into"), [
    (50, 0, 0.35),  # one FETCH of all six, cut a third of the way in (inside message 1's body)
    (50, 0, 0.99),  # the same, cut just before its end (inside the last message)
    (2, 1, 0.5),  # batches of two: the second FETCH is cut half-way
    (50, 0, 0.0001),  # cut at the first bytes of the answer, before any message
])
def test_cut_mid_fetch_loses_and_doubles_nothing(tmp_path: Path, imap_dovecot: DovecotServer, batch: int,
                                                 skip: int, into: float) -> None:
    raws = messages()
    for raw in raws:
        imap_dovecot.deliver(raw)
    with ImapProxy(imap_dovecot.host, imap_dovecot.imap_port) as proxy:
        config = write_imap_config(tmp_path, imap_dovecot, port=proxy.port, tls="none", allow_insecure=True,
                                   ca_file=None, fetch_batch=batch, extra={"batch_size": batch})
        app = make_app(config)
        answered = sum(len(raw) for raw in raws[skip * batch:(skip + 1) * batch])
        cut = proxy.cut_after(b"BODY.PEEK[]", int(answered * into), skip=skip)
        first = app.poll("imap")
        assert cut.is_set(), "the proxy never cut the FETCH"
        assert first.error is not None, first.line()
        assert "closed the connection during UID FETCH of" in first.error, first.error
        sink = tmp_path / "mail"
        partial = maildir_ids(sink)
        assert all(count == 1 for count in partial.values()) and sum(partial.values()) < len(raws)
        assert not list((sink / "tmp").glob("*"))  # no message half-written
        # Every message whose response arrived whole before the cut was delivered (each response
        # adds under 100 bytes of IMAP around the body literal).
        batch_raws, offset = raws[skip * batch:(skip + 1) * batch], int(answered * into)
        whole = [sum(len(raw) + slack for raw in batch_raws[:n + 1]) <= offset
                 for slack in (0, 100) for n in range(len(batch_raws))]
        assert sum(whole[len(batch_raws):]) <= sum(partial.values()) - skip * batch <= sum(whole[:len(batch_raws)])
        # IMAP expunges a finished batch at once; nothing not delivered has left the server.
        assert all(server_ids(imap_dovecot)[key] == 1 for key in ids(len(raws)) if key not in partial)

        second = app.poll("imap")
        assert second.clean, second.line()
        assert maildir_ids(sink) == ids(len(raws))
        assert sorted(path.read_bytes() for path in [*(sink / "new").iterdir(), *(sink / "cur").iterdir()]) \
            == sorted(raws)
        assert files(imap_dovecot) == []
        assert app.poll("imap").counts.fetched == 0
    assert not list((tmp_path / "data").rglob("spool-*"))  # nothing left half-spooled


def test_lost_between_store_deleted_and_expunge_is_expunged_next_poll(tmp_path: Path, imap_dovecot: DovecotServer,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The state a SIGKILL between ``UID STORE +FLAGS (\\Deleted)`` and ``UID EXPUNGE`` leaves behind."""
    for index in range(3):
        imap_dovecot.deliver(sample_message(index))
    store = ImapSession._store

    def store_then_lose(self: ImapSession, uids: str, flag: str) -> bool:
        done = store(self, uids, flag)
        if flag == "\\Deleted":
            raise SourceConnectionError("connection lost before UID EXPUNGE (simulated)")
        return done

    app = make_app(write_imap_config(tmp_path, imap_dovecot))
    with monkeypatch.context() as patch:
        patch.setattr(ImapSession, "_store", store_then_lose)
        first = app.poll("imap")
    assert first.error and "before UID EXPUNGE" in first.error
    assert len(files(imap_dovecot)) == 3 and all("T" in imap_support.flags(p) for p in files(imap_dovecot))
    second = app.poll("imap")
    assert second.clean and second.counts.delivered == 0, second.line()
    assert files(imap_dovecot) == []  # handled, flagged, now expunged by UID
    assert maildir_ids(tmp_path / "mail") == ids(3)


def test_a_message_another_client_flagged_deleted_is_delivered_not_lost(tmp_path: Path,
                                                                        imap_dovecot: DovecotServer) -> None:
    imap_dovecot.deliver(sample_message(1))
    name = imap_dovecot.deliver(sample_message(2))
    cur = imap_dovecot.maildir / "cur" / f"{name}:2,T"
    (imap_dovecot.maildir / "new" / name).rename(cur)  # flagged \Deleted by someone, not expunged
    report = make_app(write_imap_config(tmp_path, imap_dovecot)).poll("imap")
    assert report.clean and report.counts.delivered == 2, report.line()
    assert files(imap_dovecot) == [] and maildir_ids(tmp_path / "mail") == {"<msg-1@example.org>": 1,
                                                                            "<msg-2@example.org>": 1}
