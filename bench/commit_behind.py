#!/usr/bin/env python3
"""A measured prototype: the Maildir commit of batch *n* in a child process while batch *n+1* is parsed.

Delivers the same ``--messages`` small messages (``bench/memory.py``'s ``small_message``) in batches
of ``--batch`` two ways, with popflow's real code for everything but the file writes, the way
``bench/cpu_stages.py`` drives it (the ``bench/popflow_fetch.sh maildir`` config, in-process, no
POP3 server):

``inprocess`` (today's shape)
    per batch: ``RawMessage`` + header digest + ``Pipeline.prepare`` for each message, then
    ``Deliverer.deliver`` (the real ``MaildirSink``: files into ``tmp/``, one syncfs(2), renames into
    ``new/``, fsync of ``tmp/`` and ``new/``), ``Deliverer.record`` (the ledger), then "DELE".

``behind`` (the design change)
    the same parse and the same ``Deliverer.deliver``, but the Maildir sink's ``write`` only names
    the files (the same names as ``MaildirSink``) and its ``commit`` ships the batch (names + bytes)
    through a pipe to a stdlib-only child process, which creates the ``tmp/`` files, syncfs(2)s,
    renames into ``new/``, fsyncs both folders and acknowledges. The main process goes on parsing
    batch *n+1* meanwhile; batch *n* is recorded in the ledger and "DELE'd" only after its
    acknowledgement, read after batch *n+1* is shipped. The guarantee (every message durable in the
    sink before its DELE) is checked: each "DELE" asserts its batch's ack came first and that its
    files are in ``new/``.

"DELE" is a recorded step (no POP3 server). Each run goes into a fresh Maildir and state store;
after it, untimed, every file in ``new/`` is compared with its message, ``tmp/`` must be empty and
the ledger must hold every message. Runs alternate between the two shapes (the order flips every
repetition) and medians are printed; ``--busy-core 0,50,100`` repeats everything beside a process
that keeps one core busy that share of the time (the harness runs Dovecot on this 2-core machine)::

    .venv/bin/python bench/commit_behind.py --reps 5 --busy-core 0,50,100

What a create costs decides the result, and on an ext4 without a journal (this VM's root
filesystem) it depends on how many inodes were freed in the last 60-360 s: by default every run's
files stay until the end; ``--remove-each`` deletes each run's files after it, as the harness does.

Wall and CPU (user + system, main process and child apart) cover the batches only: the app, the
sink's ``open`` and the child's start-up come before the clock starts (in a poll they would overlap
the connect and login).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import random
import resource
import shutil
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from popflow.message import Message

# The pipe to the child: one frame per batch. Header: batch number, file count; per file: the
# lengths of the tmp name, the final name and the bytes, then the three. A count of 0 ends the child.
_BATCH = struct.Struct("<II")
_FILE = struct.Struct("<HHI")
_PIPE_BYTES = 1 << 20  # F_SETPIPE_SZ: a whole batch of small messages fits, so shipping never blocks
_F_SETPIPE_SZ = 1031  # Linux's fcntl code (fcntl.F_SETPIPE_SZ from Python 3.10, absent on some builds)
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


# --- the child: stdlib only, so it starts in ~20 ms and holds no GIL the main process needs ---------

def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError("the main process went away mid-frame")
    return data


def _phase(phases: dict[str, list[float]], name: str,
           since: tuple[float, float, float] | None) -> tuple[float, float, float]:
    """Add the wall, user and system seconds since ``since`` to ``phases[name]``; returns the new mark."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    now = (time.monotonic(), usage.ru_utime, usage.ru_stime)
    if since is not None:
        spent = phases.setdefault(name, [0.0, 0.0, 0.0])
        for i in range(3):
            spent[i] += now[i] - since[i]
    return now


def child_main(root: str) -> int:
    """Commit the batches that arrive on stdin into the Maildir ``root``; acknowledge each on stdout.

    A batch is acknowledged (``ack N``) only after its files were written to ``tmp/``, the
    filesystem was flushed (syncfs), they were renamed into ``new/`` and both folders were fsynced:
    what ``MaildirSink.commit`` guarantees when it returns. A failure answers ``err N <text>``
    after removing the batch's ``tmp/`` files (a rollback); the main process decides what follows.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    syncfs = libc.syncfs
    syncfs.argtypes = [ctypes.c_int]
    inbox, out = sys.stdin.buffer, sys.stdout.buffer
    directory = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    root_fd, tmp_fd, new_fd = (os.open(path, directory) for path in (root, f"{root}/tmp", f"{root}/new"))
    start = resource.getrusage(resource.RUSAGE_SELF)
    phases: dict[str, list[float]] = {}
    out.write(b"ready\n")
    out.flush()
    while True:
        batch, count = _BATCH.unpack(_read_exactly(inbox, _BATCH.size))
        if count == 0:
            break
        items = []
        for _ in range(count):
            tmp_len, final_len, data_len = _FILE.unpack(_read_exactly(inbox, _FILE.size))
            body = _read_exactly(inbox, tmp_len + final_len + data_len)
            items.append((body[:tmp_len].decode(), body[tmp_len:tmp_len + final_len].decode(),
                          memoryview(body)[tmp_len + final_len:]))
        created: list[str] = []
        try:
            mark = _phase(phases, "", None)
            for tmp, _final, data in items:
                fd = os.open(tmp, _NEW_FILE_FLAGS, 0o600)
                created.append(tmp)
                try:
                    while data:
                        data = data[os.write(fd, data):]
                finally:
                    os.close(fd)
            mark = _phase(phases, "create+write", mark)
            if syncfs(root_fd) != 0:  # every file on disk before the first rename
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))
            mark = _phase(phases, "syncfs", mark)
            for tmp, final, _data in items:
                os.rename(tmp, final)
            mark = _phase(phases, "rename", mark)
            os.fsync(tmp_fd)
            os.fsync(new_fd)
            _phase(phases, "fsync tmp/ new/", mark)
        except OSError as exc:
            for tmp in created:
                with contextlib.suppress(OSError):  # renamed already (complete in new/) or gone
                    os.unlink(tmp)
            out.write(f"err {batch} {exc}\n".encode())
            out.flush()
            continue
        out.write(f"ack {batch}\n".encode())
        out.flush()
    end = resource.getrusage(resource.RUSAGE_SELF)
    out.write(f"bye {end.ru_utime - start.ru_utime} {end.ru_stime - start.ru_stime} {json.dumps(phases)}\n".encode())
    out.flush()
    return 0


class Committer:
    """The main process's end of the child: ship a batch, wait for its acknowledgement."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-S", str(Path(__file__).resolve()), "--child", str(root)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.inbox, self.acks = self.proc.stdin, self.proc.stdout
        try:
            import fcntl

            fcntl.fcntl(self.inbox.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:
            pass  # a smaller pipe only makes shipping wait for the child
        if self.acks.readline() != b"ready\n":
            raise RuntimeError("the commit child did not start")
        self.waited = 0.0
        """Seconds the main process spent blocked on acknowledgements."""
        self.child_cpu = (0.0, 0.0)
        self.phases: dict[str, list[float]] = {}
        """The child's wall, user and system seconds by step of its commits."""

    def ship(self, batch: int, items: list[tuple[str, str, bytes]]) -> None:
        """Send one batch's files (tmp name, final name, bytes) to the child."""
        parts = [_BATCH.pack(batch, len(items))]
        for tmp, final, data in items:
            tmp_b, final_b = tmp.encode(), final.encode()
            parts += [_FILE.pack(len(tmp_b), len(final_b), len(data)), tmp_b, final_b, data]
        self.inbox.write(b"".join(parts))
        self.inbox.flush()

    def wait(self, batch: int) -> float:
        """Block until the child acknowledges ``batch``; returns the time of the acknowledgement."""
        before = time.monotonic()
        line = self.acks.readline().decode()
        now = time.monotonic()
        self.waited += now - before
        if line != f"ack {batch}\n":
            raise RuntimeError(f"commit of batch {batch} failed in the child: {line.strip() or 'child died'}")
        return now

    def close(self) -> None:
        """End the child and collect its CPU time (user, system) since it said ready."""
        self.inbox.write(_BATCH.pack(0, 0))
        self.inbox.flush()
        line = self.acks.readline().decode().split(" ", 3)
        assert line and line[0] == "bye", line
        self.child_cpu = (float(line[1]), float(line[2]))
        self.phases = json.loads(line[3])
        self.inbox.close()
        self.proc.wait(timeout=30)


# --- the two shapes, with popflow's real pipeline, deliverer and ledger ----------------------------

@dataclass
class Run:
    """What one run measured."""

    shape: str
    wall: float
    parent: tuple[float, float]
    child: tuple[float, float] = (0.0, 0.0)
    waited: float = 0.0
    phases: dict[str, list[float]] = field(default_factory=dict)
    events: list[tuple[str, int, float]] = field(default_factory=list)


def _shipping_sink(base: Any, committer: Committer) -> Any:
    """A ``MaildirSink`` whose write names the files as the real one does and whose commit ships them.

    ``write`` is ``MaildirSink.write``'s group-commit branch without the file create; ``commit``
    hands the batch to the child and returns before it is durable, so the caller must not record
    the batch before :meth:`Committer.wait` (what the "behind" loop does).
    """
    from popflow.sinks import maildir

    class ShippingMaildir(maildir.MaildirSink):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.batch = 0
            self._queued: list[tuple[str, str, bytes]] = []

        def write(self, message: Message) -> None:
            self.open()
            key = maildir.delivery_key(message.source, message.uidl, message.sha256)
            if key in self._known:
                return
            root = self._root_str
            final = f"{root}/new/{key}{maildir.MAILDIR_SUFFIX}"
            tmp = (f"{root}/tmp/{time.time_ns()}.P{maildir._unique.pid}Q{next(maildir._counter)}"
                   f"R{maildir._unique.random_hex()}.{key}")
            self._known.add(key)
            self._queued.append((tmp, final, b"".join(message.raw.iter_chunks())))

        def commit(self) -> None:
            queued, self._queued = self._queued, []
            committer.ship(self.batch, queued)

        def rollback(self) -> None:
            self._queued = []

    return ShippingMaildir(base.name, base.config, base.context)


def one_run(shape: str, messages: list[bytes], scratch: Path, batch_size: int, remove: bool = False) -> Run:
    """Deliver ``messages`` once in ``shape`` (``inprocess`` or ``behind``) into a fresh Maildir; check it."""
    from harness_config import write_maildir_config

    from popflow.app import App
    from popflow.config import load_config
    from popflow.outcome import Outcome
    from popflow.raw import RawMessage
    from popflow.sinks.folder import delivery_key
    from popflow.sources.base import Listing
    from popflow.sources.keys import header_digest

    work = Path(tempfile.mkdtemp(prefix=f"{shape}-", dir=scratch))
    maildir_root = work / "Maildir"
    app = App(load_config(write_maildir_config(work, 110, maildir_root)))
    app.prepare_data_dir()
    pipeline, deliverer = app.pipeline(), app.deliverer()
    runner = deliverer.runners["maildir"]
    runner.ensure_open()  # creates cur/ new/ tmp/ (the child opens them)
    committer: Committer | None = None
    shipping: Any = None
    if shape == "behind":
        committer = Committer(maildir_root)
        runner.sink = shipping = _shipping_sink(runner.sink, committer)
        runner.opened = False
        runner.ensure_open()
    listings = [Listing(i + 1, f"uidl-{i}", len(m), server_uidl=f"uidl-{i}") for i, m in enumerate(messages)]
    finals: dict[int, list[str]] = {}
    events: list[tuple[str, int, float]] = []

    def prepare(number: int) -> tuple[list[Any], list[Any], dict[str, str]]:
        start = number * batch_size
        deliveries, outcomes, heads = [], [], {}
        for listing, data in zip(listings[start:start + batch_size], messages[start:start + batch_size],
                                 strict=True):
            raw = RawMessage.from_chunks(iter([data[i:i + 65536] for i in range(0, len(data), 65536)]))
            heads[listing.uidl] = header_digest(raw.head())
            prepared = pipeline.prepare(raw, "bench", listing.uidl)
            if isinstance(prepared, Outcome):
                outcomes.append((listing, prepared))
            else:
                deliveries.append((listing, prepared))
        finals[number] = [f"{maildir_root}/new/{delivery_key('bench', listing.uidl)}.popflow"
                          for listing, _ in deliveries]
        return deliveries, outcomes, heads

    def record_and_dele(number: int, results: list[Any], heads: dict[str, str], acked: float) -> None:
        deliverer.record("bench", results, mailbox="m", heads=heads)
        events.append(("record", number, time.monotonic()))
        # "DELE": the guarantee is that the batch is durable in new/ by now.
        assert events[-2] == ("ack", number, acked), (number, events[-3:])
        missing = [path for path in finals[number] if not os.path.exists(path)]
        assert not missing, f"batch {number}: DELE before {len(missing)} file(s) reached new/"
        events.append(("dele", number, time.monotonic()))

    batches = (len(messages) + batch_size - 1) // batch_size
    os.sync()  # the previous run's writes and removals do not land in this run's syncfs
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    inflight: tuple[int, list[Any], dict[str, str]] | None = None
    for number in range(batches):
        deliveries, outcomes, heads = prepare(number)
        if committer is not None:
            shipping.batch = number
        delivered = deliverer.deliver([d for _, d in deliveries])
        results = outcomes + [(listing, o) for (listing, _), o in zip(deliveries, delivered, strict=True)]
        if committer is None:
            acked = time.monotonic()  # deliver() returned: the batch is committed
            events.append(("ack", number, acked))
            record_and_dele(number, results, heads, acked)
            continue
        events.append(("ship", number, time.monotonic()))
        if inflight is not None:  # batch n-1: its commit ran while batch n was parsed
            previous, previous_results, previous_heads = inflight
            acked = committer.wait(previous)
            events.append(("ack", previous, acked))
            record_and_dele(previous, previous_results, previous_heads, acked)
        inflight = (number, results, heads)
    if committer is not None and inflight is not None:
        acked = committer.wait(inflight[0])
        events.append(("ack", inflight[0], acked))
        record_and_dele(inflight[0], inflight[1], inflight[2], acked)
    wall = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    run = Run(shape, wall, (cpu1.ru_utime - cpu0.ru_utime, cpu1.ru_stime - cpu0.ru_stime), events=events)
    if committer is not None:
        committer.close()
        run.child, run.waited, run.phases = committer.child_cpu, committer.waited, committer.phases
    deliverer.close()
    app.close()
    _check(run, messages, listings, maildir_root, work / "popflow-state.db", batches)
    if remove:
        shutil.rmtree(work, ignore_errors=True)
    return run


def _check(run: Run, messages: list[bytes], listings: list[Any], root: Path, state_db: Path, batches: int) -> None:
    """Every message in ``new/`` byte for byte, nothing in ``tmp/``, all in the ledger, DELE after ack."""
    from popflow.sinks.folder import delivery_key

    by_name = {f"{delivery_key('bench', listing.uidl)}.popflow": data for listing, data in zip(listings, messages,
                                                                                                  strict=True)}
    names = os.listdir(root / "new")
    assert len(names) == len(messages), (run.shape, len(names), len(messages))
    for name in names:
        assert (root / "new" / name).read_bytes() == by_name[name], (run.shape, name)
    assert not os.listdir(root / "tmp"), (run.shape, "tmp/ not empty")
    with sqlite3.connect(state_db) as db:
        (handled,) = db.execute("select count(*) from popflow_ledger where state = 'handled'").fetchone()
    assert handled == len(messages), (run.shape, handled)
    when = {(kind, number): at for kind, number, at in run.events}
    for number in range(batches):
        assert when[("ack", number)] <= when[("record", number)] <= when[("dele", number)], (run.shape, number)
    deles = [number for kind, number, _ in run.events if kind == "dele"]
    assert deles == list(range(batches)), (run.shape, "DELEs out of order")


# --- the busy core, the repetitions, the report ------------------------------------------------------

def start_burner(percent: int) -> subprocess.Popen[bytes] | None:
    """A process that keeps one core busy ``percent`` % of every 10 ms (None for 0)."""
    if percent <= 0:
        return None
    duty = min(percent, 100) / 100 * 0.01
    rest = max(0.01 - duty, 0.0)
    code = (f"import time\nwhile True:\n    t = time.perf_counter()\n"
            f"    while time.perf_counter() - t < {duty!r}: pass\n    time.sleep({rest!r})\n")
    return subprocess.Popen([sys.executable, "-S", "-c", code])


def _median(values: list[float]) -> float:
    return statistics.median(values)


def report(runs: list[Run], count: int, harness: tuple[float, float, float], startup: float) -> None:
    """Medians of each shape, the fraction of wall time saved and what it would make of the harness figure."""
    popflow_rate, naive_rate, ceiling_rate = harness
    medians: dict[str, dict[str, float]] = {}
    print(f"  {'shape':10s} {'wall s':>7s} {'msg/s':>7s} {'main user':>9s} {'main sys':>8s} {'child user':>10s}"
          f" {'child sys':>9s} {'ack wait':>8s}   (median of {len([r for r in runs if r.shape == 'inprocess'])})")
    for shape in ("inprocess", "behind"):
        mine = [run for run in runs if run.shape == shape]
        if not mine:
            continue
        m = {"wall": _median([r.wall for r in mine]), "pu": _median([r.parent[0] for r in mine]),
             "ps": _median([r.parent[1] for r in mine]), "cu": _median([r.child[0] for r in mine]),
             "cs": _median([r.child[1] for r in mine]), "wait": _median([r.waited for r in mine])}
        medians[shape] = m
        walls = ", ".join(f"{r.wall:.2f}" for r in mine)
        print(f"  {shape:10s} {m['wall']:7.2f} {count / m['wall']:7.0f} {m['pu']:9.2f} {m['ps']:8.2f} {m['cu']:10.2f}"
              f" {m['cs']:9.2f} {m['wait']:8.2f}   walls: {walls}")
    behind = [run for run in runs if run.shape == "behind"]
    if behind:
        print("  the child's commit, by step, median µs per message (wall / user / system):")
        for step in behind[0].phases:
            wall, user, system = (_median([r.phases[step][i] for r in behind]) / count * 1e6 for i in range(3))
            print(f"    {step:16s} {wall:6.0f} / {user:4.0f} / {system:4.0f}")
    if len(medians) < 2:
        return
    before, after = medians["inprocess"]["wall"], medians["behind"]["wall"]
    fraction = 1 - after / before
    saved_us = (before - after) / count * 1e6
    harness_wall = 10_000 / popflow_rate
    same_fraction = 10_000 / (startup + (harness_wall - startup) * (1 - fraction))
    same_saving = 10_000 / (harness_wall - saved_us * 10_000 / 1e6)
    print(f"  behind / inprocess wall: {after / before:.3f} (saves {fraction:.1%}, {saved_us:.0f} µs per message)")
    for label, rate in (("same fraction of the per-message wall", same_fraction),
                        ("same µs saved per message", same_saving)):
        print(f"  harness small, {label}: {popflow_rate:,.0f} -> {rate:,.0f} msg/s = {rate / naive_rate:.2f}x naive, "
              f"{rate / ceiling_rate:.0%} of the ceiling")


def main() -> int:
    """Parse the options, run the interleaved repetitions for each busy level, print the report."""
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        return child_main(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each shape, interleaved (default 3)")
    parser.add_argument("--busy-core", default="0", help="comma-separated %% of one core kept busy, e.g. 0,50,100")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: in /tmp; use the disk "
                        "the Maildir would be on: on tmpfs a create costs nothing)")
    parser.add_argument("--remove-each", action="store_true",
                        help="delete each run's files right after it (default: all at the end; on an ext4 without a "
                        "journal, like this VM's, inodes freed in the last 60-360 s are skipped one by one at every "
                        "create, so deleting a run's 10,000 files makes the next run's creates several times dearer)")
    parser.add_argument("--harness", default="2089,1212,8547",
                        help="popflow, naive and ceiling msg/s of the harness's small workload to project onto")
    parser.add_argument("--startup", type=float, default=0.5,
                        help="seconds of the harness's popflow wall not per message (start-up), kept as is")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ["POPFLOW_LOAD_PLUGINS"] = ""  # what the harness has: popflow alone
    from memory import small_message

    rng = random.Random(42)
    messages = [small_message(i, rng) for i in range(args.messages)]
    harness = tuple(float(x) for x in args.harness.split(","))
    assert len(harness) == 3
    scratch = Path(tempfile.mkdtemp(prefix="popflow-behind-", dir=args.dir))
    print(f"{args.messages} messages of ~{sum(map(len, messages)) // len(messages)} bytes, batches of {args.batch},"
          f" scratch {scratch}, load average {os.getloadavg()[0]:.2f}")
    try:
        for level in (int(x) for x in args.busy_core.split(",")):
            burner = start_burner(level)
            try:
                print(f"busy core: {level}%")
                runs: list[Run] = []
                for rep in range(args.reps):
                    order = ("inprocess", "behind") if rep % 2 == 0 else ("behind", "inprocess")
                    for shape in order:
                        run = one_run(shape, messages, scratch, args.batch, args.remove_each)
                        runs.append(run)
                        print(f"    rep {rep + 1} {shape:10s} wall {run.wall:.2f}s main {run.parent[0]:.2f}u"
                              f"+{run.parent[1]:.2f}s child {run.child[0]:.2f}u+{run.child[1]:.2f}s"
                              f" ack wait {run.waited:.2f}s  (checked)", flush=True)
                report(runs, args.messages, (harness[0], harness[1], harness[2]), args.startup)
            finally:
                if burner is not None:
                    burner.terminate()
                    burner.wait()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
