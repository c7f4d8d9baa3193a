#!/usr/bin/env python3
"""Prototype: overlap the next batch's RETRs with the current batch's work, against today's lock-step.

Today a poll alternates: RETR a batch (the client waits for the server), then parse, write, commit
and record it (the server waits for the client), then DELE it. This prototype drives a private
Dovecot (``tests.support.dovecot``, root needed) with popflow's own parts — the POP3 wire, the
header parse, the Maildir sink with group commit, the SQLite ledger — in two orders:

* ``lockstep``: RETR batch n, read it; parse, write, commit, record n; DELE n; read the DELE replies;
* ``overlap``: after reading batch n, send the RETRs of batch n+1 *before* processing n, so the
  server streams n+1 into the socket buffers while the client works; then DELE n (still only after
  n's commit and ledger record), read n+1, then the DELE replies of n. POP3 answers in order, so the
  replies stay unambiguous; the guarantee (on disk and in the ledger before DELE) is unchanged.

    .venv/bin/python bench/overlap_prototype.py [-n 3000] [--batch 100] [--reps 3]

Prints wall and CPU time per mode, alternating the modes in each repetition (the machine is shared).
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support
sys.path.insert(0, str(Path(__file__).resolve().parent))  # memory.small_message

from memory import small_message
from popflow.parser import parse_message  # type: ignore[attr-defined,unused-ignore]

from popflow.context import RuntimeContext
from popflow.raw import RawMessage
from popflow.sinks.folder import FolderConfig, FolderSink
from popflow.sources.pop3_wire import Pop3Wire
from popflow.state import HandledMessage, StateStore
from tests.support.dovecot import start_dovecot

SPENT: dict[str, float] = {}
"""Wall seconds per step of the last poll: read (waiting for RETR replies), parse+write, commit
(the Maildir's syncfs and directory fsyncs), ledger (the SQLite transaction), dele, quit."""


class _Step:
    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *_exc: object) -> None:
        SPENT[self.name] = SPENT.get(self.name, 0.0) + time.perf_counter() - self.started


def _send_retrs(wire: Pop3Wire, numbers: list[int]) -> None:
    if numbers:
        wire.send(b"".join(b"RETR %d\r\n" % number for number in numbers))


def _read_retrs(wire: Pop3Wire, numbers: list[int]) -> list[RawMessage]:
    raws = []
    with _Step("read"):
        for _ in numbers:
            if not wire.read_response().ok:
                raise RuntimeError("RETR refused")
            raws.append(RawMessage.from_chunks(wire.iter_body(what="a message")))
    return raws


def _process(raws: list[RawMessage], numbers: list[int], sink: FolderSink, store: StateStore) -> None:
    handled = []
    with _Step("parse+write"):
        for number, raw in zip(numbers, raws, strict=True):
            message = parse_message(raw, "bench")
            message.uidl = f"u{number}"
            sink.write(message)
            handled.append(HandledMessage("bench", message.uidl, "delivered", raw.size, raw.sha256))
    with _Step("commit"):
        sink.commit()
    with _Step("ledger"):
        store.record_handled(handled, [("bench", item.uidl, "maildir") for item in handled])


def poll(server: object, count: int, batch: int, overlap: bool, work: Path) -> None:
    """One poll of ``count`` messages into a fresh Maildir and ledger."""
    context = RuntimeContext(data_dir=work / "data", base_dir=work)
    sink = FolderSink("maildir", FolderConfig(type="folder", path=work / "Maildir"), context)
    store = StateStore(f"sqlite:///{work}/state.db")
    wire = Pop3Wire.open("127.0.0.1", server.port, 30.0)  # type: ignore[attr-defined]
    try:
        wire.read_response()
        for line in (f"USER {server.username}", f"PASS {server.password}"):  # type: ignore[attr-defined]
            wire.send_line(line)
            if not wire.read_response().ok:
                raise RuntimeError("login refused")
        batches = [list(range(start, min(start + batch, count + 1))) for start in range(1, count + 1, batch)]
        _send_retrs(wire, batches[0])
        raws = _read_retrs(wire, batches[0])
        for index, numbers in enumerate(batches):
            following = batches[index + 1] if index + 1 < len(batches) else []
            if overlap:
                _send_retrs(wire, following)  # the server works on n+1 while we process n
            _process(raws, numbers, sink, store)
            wire.send(b"".join(b"DELE %d\r\n" % number for number in numbers))
            if overlap:
                raws = _read_retrs(wire, following)
                with _Step("dele"):
                    for _ in numbers:
                        wire.read_response()
            else:
                with _Step("dele"):
                    for _ in numbers:
                        wire.read_response()
                _send_retrs(wire, following)
                raws = _read_retrs(wire, following)
        with _Step("quit"):
            wire.send_line("QUIT")
            wire.read_response()
    finally:
        wire.close()
        sink.close()
        store.close()


def main() -> int:
    """Run both modes ``--reps`` times, alternating, and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(42)
    messages = [small_message(i, rng) for i in range(args.n)]
    server = start_dovecot()
    results: dict[str, list[tuple[float, float]]] = {"lockstep": [], "overlap": []}
    try:
        for _ in range(args.reps):
            for mode in ("lockstep", "overlap"):
                server.reset()
                for data in messages:
                    server.deliver(data)
                work = Path(tempfile.mkdtemp(prefix="popflow-overlap-"))
                SPENT.clear()
                before = resource.getrusage(resource.RUSAGE_SELF)
                started = time.perf_counter()
                poll(server, args.n, args.batch, mode == "overlap", work)
                wall = time.perf_counter() - started
                after = resource.getrusage(resource.RUSAGE_SELF)
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                delivered = len(list((work / "Maildir" / "new").iterdir()))
                if delivered != args.n or server.count() != 0:
                    raise RuntimeError(f"{mode}: delivered {delivered}, {server.count()} left on the server")
                results[mode].append((wall, cpu))
                steps = ", ".join(f"{name} {seconds:.2f}" for name, seconds in SPENT.items())
                print(f"  {mode:8s} {wall:6.2f} s wall  {args.n / wall:6.0f} msg/s  CPU {cpu:5.2f} s  ({steps})",
                      flush=True)
                shutil.rmtree(work, ignore_errors=True)
    finally:
        server.stop()
    for mode, runs in results.items():
        walls = sorted(wall for wall, _cpu in runs)
        print(f"{mode:8s} median {walls[len(walls) // 2]:.2f} s wall, {args.n / walls[len(walls) // 2]:.0f} msg/s")
    lock, over = (sorted(w for w, _ in results[m])[len(results[m]) // 2] for m in ("lockstep", "overlap"))
    print(f"overlap / lockstep throughput: {lock / over:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
