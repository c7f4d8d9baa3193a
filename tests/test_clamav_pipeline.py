"""The ClamAV plugin inside popflow's pipeline (popflow/pipeline.py) with a real, private clamd.

What the scan stage does with each verdict: infected → quarantined (raw bytes kept byte for byte,
listed in the state DB, never routed); clean → routed; clamd down → deferred (nothing routed
unscanned) and routed once clamd is back; ``on_error`` quarantine/deliver; release = the rest of
the pipeline without the scan.

The parser and router here are minimal test plugins so the test does not depend on the built-in
parser; the full CLI path (``popflow poll`` + ``popflow quarantine``) belongs with the poller tests.
"""

from __future__ import annotations

from pathlib import Path

from popflow_clamav.plugin import ClamavPlugin

from popflow import Message, hookimpl
from popflow.config import Config
from popflow.holding import Holding
from popflow.outcome import Delivery, Outcome
from popflow.pipeline import Pipeline
from popflow.plugins import PopflowPluginManager
from popflow.raw import RawMessage
from popflow.raw_store import MessageStore
from popflow.state import StateStore
from tests.support.clamd import SIGNATURE_PREFIX, STREAM_MAX_LENGTH, ClamdServer, free_port
from tests.test_clamav import big_mail, clean_mail, eicar_attachment, eicar_quoted_printable, eicar_zip


class HeadersOnlyParser:
    """Just enough of a parser: the subject, and the raw bytes attached."""

    @hookimpl
    def popflow_parse(self, raw: RawMessage, source: str) -> Message:
        subject = None
        for line in raw.head().split(b"\n"):
            if line.lower().startswith(b"subject:"):
                subject = line[8:].strip().decode("ascii", "replace")
                break
        message = Message(source=source, subject=subject)
        message.attach_raw(raw)
        return message


class ArchiveRouter:
    """Everything goes to the sink ``archive``."""

    @hookimpl
    def popflow_route(self, message: Message) -> list[str]:
        return ["archive"]



def make_pipeline(tmp_path: Path, **clamav: object) -> Pipeline:
    tmp_path.mkdir(parents=True, exist_ok=True)
    pm = PopflowPluginManager()
    pm.register(HeadersOnlyParser(), name="test-parser")
    pm.register(ArchiveRouter(), name="test-router")
    pm.register(ClamavPlugin(), name="clamav")
    pm.hook.popflow_startup(config=Config.model_validate({"plugins": {"clamav": clamav}}))
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    return Pipeline(pm, Holding(state, MessageStore(tmp_path / "messages")), {"archive"})


def run(pipeline: Pipeline, data: bytes, uidl: str, *, scan: bool = True) -> Delivery | Outcome:
    return pipeline.prepare(RawMessage.from_bytes(data), "support", uidl, scan=scan)


def test_infected_quarantined_clean_routed(tmp_path: Path, clamd_private: ClamdServer) -> None:
    pipeline = make_pipeline(tmp_path, address=clamd_private.address)
    samples = {"b64": eicar_attachment(), "zip": eicar_zip(), "qp": eicar_quoted_printable(),
               "clean": clean_mail()}
    results = {uidl: run(pipeline, data, uidl) for uidl, data in samples.items()}

    assert isinstance(results["clean"], Delivery)
    assert results["clean"].sinks == ["archive"]
    assert "scanned" in results["clean"].message.tags
    for uidl in ("b64", "zip", "qp"):
        outcome = results[uidl]
        assert isinstance(outcome, Outcome), outcome
        assert outcome.kind == "quarantined", outcome
        assert SIGNATURE_PREFIX in outcome.reason

    entries = pipeline.holding.state.quarantined()
    assert sorted(entry["uidl"] for entry in entries) == ["b64", "qp", "zip"]
    for entry in entries:
        (verdict,) = entry["verdicts"]
        assert (verdict["status"], verdict["scanner"]) == ("infected", "clamav")
        assert verdict["signature"].startswith(SIGNATURE_PREFIX)
        assert pipeline.holding.store.read(entry["sha256"]) == samples[entry["uidl"]]  # byte for byte


def test_clamd_down_defers_then_delivers(tmp_path: Path, clamd_private: ClamdServer) -> None:
    pipeline = make_pipeline(tmp_path, address=clamd_private.address, timeout="3s")
    clamd_private.stop()
    for uidl, data in (("clean", clean_mail()), ("virus", eicar_zip())):
        outcome = run(pipeline, data, uidl)
        assert isinstance(outcome, Outcome), outcome
        assert outcome.kind == "deferred", outcome
        assert "clamav" in outcome.reason
    assert pipeline.holding.state.quarantined() == []  # nothing recorded while clamd was away

    clamd_private.start()  # next poll: the same messages again
    clean = run(pipeline, clean_mail(), "clean")
    assert isinstance(clean, Delivery)
    assert "unscanned" not in clean.message.tags
    virus = run(pipeline, eicar_zip(), "virus")
    assert isinstance(virus, Outcome)
    assert virus.kind == "quarantined"


def test_on_error_quarantine_and_deliver(tmp_path: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"
    held = make_pipeline(tmp_path / "q", address=closed, on_error="quarantine", timeout="2s")
    outcome = run(held, clean_mail(), "u1")
    assert isinstance(outcome, Outcome)
    assert outcome.kind == "quarantined"
    (entry,) = held.holding.state.quarantined()
    assert entry["verdicts"][0]["status"] == "error"
    assert "cannot connect" in entry["verdicts"][0]["reason"]

    passed = make_pipeline(tmp_path / "d", address=closed, on_error="deliver", timeout="2s")
    routed = run(passed, clean_mail(), "u1")
    assert isinstance(routed, Delivery)
    assert "unscanned" in routed.message.tags
    assert "cannot connect" in routed.message.meta["popflow.unscanned"][0]


def test_over_stream_max_length_never_delivered_as_clean(tmp_path: Path, clamd_private: ClamdServer) -> None:
    pipeline = make_pipeline(tmp_path, address=clamd_private.address)
    outcome = run(pipeline, big_mail(2 * STREAM_MAX_LENGTH), "big")
    assert isinstance(outcome, Outcome)
    assert outcome.kind == "deferred"
    assert "size limit" in outcome.reason


def test_release_runs_the_pipeline_without_the_scan(tmp_path: Path, clamd_private: ClamdServer) -> None:
    pipeline = make_pipeline(tmp_path, address=clamd_private.address)
    infected = eicar_zip()
    assert isinstance(run(pipeline, infected, "v1"), Outcome)
    (entry,) = pipeline.holding.state.quarantined()
    # What `popflow quarantine release` does: the stored bytes, the stages after the scan.
    released = pipeline.prepare(pipeline.holding.store.get(entry["sha256"]), entry["source"], entry["uidl"], scan=False)
    assert isinstance(released, Delivery)
    assert released.sinks == ["archive"]
    assert released.message.raw.read() == infected
