#!/usr/bin/env python3
"""How polls scale over `popflow worker` processes, with mailboxes behind a real network latency.

(docs/performance.md, "Scale-out on Celery"; the capacity model in docs/scale-out.md.)

Real parts: a private Dovecot (implicit TLS, one user per mailbox), the machine's Redis as the
broker, PostgreSQL for the shared state store and the database sink, `popflow run` (the
scheduler) and `popflow worker` as real processes, the mailboxes added with `popflow sources
import` (the registry). Between popflow and Dovecot sits a **delaying TCP proxy on loopback** (an
asyncio process adding ``--rtt``/2 to every chunk in each direction): this machine's kernel has no
``sch_netem`` (``tc qdisc ... netem`` fails with "Specified qdisc kind is unknown" inside network
namespaces too), so Linux netns + netem was not possible here.

Two measurements:

1. **An empty poll, broken down** (in this process, one poll at a time, through the same
   :class:`~popflow.executors.task.PollTask` a worker runs): TCP connect, TLS handshake, greeting +
   CAPA, login, STAT, LIST+UIDL, QUIT, and the state database (run rows, ledger, lease, tick
   bookkeeping, registry check), plus the CPU time of the poll — at RTT 0 (Dovecot directly) and
   at ``--rtt``.
2. **Throughput** with 1, 2 and 4 workers (``--concurrency`` threads each) and one scheduler:
   ``--mailboxes`` sources with ``every: 1s`` (more demand than the workers can serve, so they
   are saturated): polls per second over ``--window`` seconds of empty polls, then messages per
   second to drain ``--messages`` messages per mailbox into the PostgreSQL sink; and the CPU
   seconds each part used per poll.

    sudo .venv/bin/python bench/scale_out.py [--mailboxes 200] [--rtt 20ms] [--concurrency 4]
        [--window 25] [--messages 10] [--workers 1,2,4]

Needs root (Dovecot), Redis on 127.0.0.1:6379, PostgreSQL at $POPFLOW_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support: Dovecot, brokers, processes

from popflow.durations import parse_duration
from tests.support.dovecot import DovecotServer, start_dovecot
from tests.support.pipeline import sample_message
from tests.support.scaleout import Proc, broker_url, pg_schema, purge_queue, queue_name, wait_until

KEY = Fernet.generate_key().decode()  # the bench's registry only


# -- the delaying proxy ------------------------------------------------------------------------------
async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Forward reader → writer, each chunk ``delay`` seconds after it arrived (order kept, no rate limit)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def pump() -> None:
        while True:
            data = await reader.read(65536)
            await queue.put((loop.time() + delay, data))
            if not data:
                return

    pumping = asyncio.create_task(pump())
    _running.add(pumping)
    pumping.add_done_callback(_running.discard)
    try:
        while True:
            due, data = await queue.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        pumping.cancel()
        writer.close()


_running: set[asyncio.Task[None]] = set()  # the event loop keeps only weak references to tasks


async def _serve(target_port: int, delay: float, ready: Any) -> None:
    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer, delay), _pipe(up_reader, writer, delay))

    def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(forward(reader, writer))
        _running.add(task)
        task.add_done_callback(_running.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    ready.send(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def _proxy_main(target_port: int, delay: float, ready: Any) -> None:
    asyncio.run(_serve(target_port, delay, ready))


def start_proxy(target_port: int, rtt: float) -> tuple[multiprocessing.Process, int]:
    """A proxy process on a loopback port adding ``rtt`` of round-trip latency to ``target_port``."""
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.Process(target=_proxy_main, args=(target_port, rtt / 2, child), daemon=True)
    process.start()
    return process, int(parent.recv())


# -- CPU accounting ----------------------------------------------------------------------------------
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of a process (and of its reaped children: Dovecot's login and pop3 processes)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    used = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return used / TICK


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine (every helper sharing it included)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


# -- the breakdown of one empty poll -----------------------------------------------------------------
class Timers:
    """Wall time spent in chosen functions, by label; nested calls of one group are counted once."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self._local = threading.local()
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, label: str, group: str) -> None:
        original = getattr(owner, attr)
        timers = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            if getattr(timers._local, group, False):
                return original(*args, **kwargs)
            setattr(timers._local, group, True)
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timers.spent[label] += time.perf_counter() - started
                setattr(timers._local, group, False)

        setattr(owner, attr, timed)
        self._undo.append(lambda: setattr(owner, attr, original))

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()


@contextmanager
def instrumented() -> Iterator[Timers]:
    from popflow import locks, source_registry
    from popflow.executors import ticks
    from popflow.sources import pop3_session, pop3_wire
    from popflow.state import StateStore

    timers = Timers()
    timers.wrap(pop3_session, "make_ssl_context", "TLS context (CA store)", "pop3")
    timers.wrap(pop3_wire.Pop3Wire, "open", "TCP connect", "pop3")
    timers.wrap(pop3_wire.Pop3Wire, "start_tls", "TLS handshake", "pop3")
    timers.wrap(pop3_session, "authenticate", "login", "pop3")
    timers.wrap(pop3_session.Pop3Session, "stat", "STAT", "pop3")
    timers.wrap(pop3_session.Pop3Session, "open", "session open (total)", "open")
    timers.wrap(pop3_session.Pop3Session, "list_messages", "LIST + UIDL", "pop3")
    timers.wrap(pop3_session.Pop3Session, "close", "QUIT", "pop3")
    for name in dir(StateStore):
        if not name.startswith("_") and callable(getattr(StateStore, name)) and name not in ("transaction", "close"):
            timers.wrap(StateStore, name, "state DB: runs + ledger", "db")
    timers.wrap(locks.Lease, "acquire", "state DB: lease", "db")
    timers.wrap(locks.Lease, "release", "state DB: lease", "db")
    timers.wrap(ticks.TickBook, "start", "state DB: tick start/finish", "db")
    timers.wrap(ticks.TickBook, "finish", "state DB: tick start/finish", "db")
    timers.wrap(ticks.TickBook, "claim", "scheduler: claim tick", "db")
    timers.wrap(source_registry.SourceRegistry, "snapshot", "state DB: registry check", "db")
    try:
        yield timers
    finally:
        timers.restore()


def empty_poll_breakdown(config: Path, source: str, rounds: int, context_cache: bool = True) -> dict[str, float]:
    """The mean of each step over ``rounds`` empty polls of ``source``, in milliseconds.

    ``context_cache=False`` builds a new TLS context for every poll, as popflow did before it
    shared them (the "before" figure of docs/performance.md).
    """
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from popflow.app import App
    from popflow.config import load_config
    from popflow.executors.task import PollTask
    from popflow.executors.ticks import TickBook
    from popflow.sources import tls

    app = App(load_config(config))
    task = PollTask(app, app.config.executor)
    book = TickBook(app.state, "bench:scheduler", 60.0)
    book.claim([(source, 1)])
    task.run(source, 1)  # warm: connections in the pool, imports, TLS context
    walls, cpus = [], []
    counted = {"statements": 0, "commits": 0}

    def on_statement(*_args: Any) -> None:
        counted["statements"] += 1

    def on_commit(*_args: Any) -> None:
        counted["commits"] += 1

    event.listen(Engine, "before_cursor_execute", on_statement)
    event.listen(Engine, "commit", on_commit)
    with instrumented() as timers:
        for _ in range(rounds):
            if not context_cache:
                tls._contexts.clear()
            tick = int(time.time() * 1000)
            book.claim([(source, tick)])
            started, cpu = time.perf_counter(), time.process_time()
            task.run(source, tick)
            walls.append(time.perf_counter() - started)
            cpus.append(time.process_time() - cpu)
        spent = dict(timers.spent)
    event.remove(Engine, "before_cursor_execute", on_statement)
    event.remove(Engine, "commit", on_commit)
    app.close()
    out = {label: seconds / rounds * 1000 for label, seconds in spent.items()}
    opened = out.pop("session open (total)", 0.0)
    out["greeting + CAPA"] = opened - sum(out.get(k, 0.0) for k in ("TLS context (CA store)", "TCP connect",
                                                                        "TLS handshake", "login", "STAT"))
    claim = out.pop("scheduler: claim tick", 0.0)
    out["total (worker side)"] = statistics.mean(walls) * 1000
    out["other (python: config, pipeline, sinks, logging)"] = out["total (worker side)"] - sum(
        value for key, value in out.items() if key != "total (worker side)")
    out["CPU of the poll (worker process)"] = statistics.mean(cpus) * 1000
    out["scheduler: claim tick"] = claim
    out["SQL statements per poll (incl. claim)"] = counted["statements"] / rounds
    out["transactions committed per poll (incl. claim)"] = counted["commits"] / rounds
    return out


# -- throughput ----------------------------------------------------------------------------------------
def write_config(folder: Path, state: str, broker: str, queue: str) -> Path:
    data = {"state": state, "data_dir": "./data", "log_level": "INFO", "batch_size": 50,
            "executor": {"type": "celery", "broker": broker, "queue": queue, "lease": "60s"},
            "sinks": {"db": {"type": "database", "url": state, "table_prefix": "sink_"}},
            "routes": [{"sinks": ["db"]}]}
    path = folder / "popflow.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    path.chmod(0o600)
    return path


def import_sources(config: Path, boxes: list[DovecotServer], port: int, ca_file: Path, every: str) -> None:
    lines = ["name,host,port,ca_file,username,password,every,timeout"]
    lines += [f"box{index:04d},127.0.0.1,{port},{ca_file},{box.username},{box.password},{every},30s"
              for index, box in enumerate(boxes)]
    csv_path = config.parent / "sources.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    import subprocess

    subprocess.run([sys.executable, "-m", "popflow", "-q", "sources", "import", "-c", str(config), str(csv_path)],
                   check=True, env={**os.environ, "POPFLOW_SECRET_KEY": KEY}, cwd=config.parent,
                   stdout=subprocess.DEVNULL)
    csv_path.unlink()


def scalar(state: str, query: str, **params: Any) -> Any:
    engine = create_engine(state)
    try:
        with engine.connect() as connection:
            try:
                return connection.execute(text(query), params).scalar()
            except Exception:
                return 0
    finally:
        engine.dispose()


def throughput(folder: Path, server: DovecotServer, boxes: list[DovecotServer], proxy_port: int, workers: int,
               concurrency: int, window: float, per_box: int, offset: int) -> dict[str, float]:
    broker, queue = broker_url("redis"), queue_name()
    run_dir = folder / f"w{workers}"
    run_dir.mkdir()
    procs: list[Proc] = []
    with pg_schema() as state:
        config = write_config(run_dir, state, broker, queue)
        import_sources(config, boxes, proxy_port, server.ca_file, "1s")
        os.environ["POPFLOW_SECRET_KEY"] = KEY
        try:
            procs += [Proc.start(f"worker{n}", config, "worker", "--concurrency", str(concurrency))
                      for n in range(workers)]
            procs.append(Proc.start("scheduler", config, "run"))
            warm = 5 * workers * concurrency  # five polls per thread: imports, pools, TLS contexts
            wait_until(lambda: scalar(state, "SELECT count(*) FROM popflow_runs") >= warm, 120,
                       what="the fleet to warm up")
            parts = {"workers": [p.pid for p in procs[:workers]], "scheduler": [procs[-1].pid]}
            dovecot_pid = server.master_pid()

            def cpu() -> dict[str, float]:
                used = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in parts.items()}
                used["dovecot"] = cpu_seconds(dovecot_pid, children=True) if dovecot_pid else 0.0
                return used

            started_at, cpu0, busy0 = datetime.now(UTC), cpu(), machine_busy()
            time.sleep(window)
            ended_at, cpu1, busy1 = datetime.now(UTC), cpu(), machine_busy()
            polls = scalar(state, "SELECT count(*) FROM popflow_runs WHERE finished_at > :a AND finished_at <= :b",
                           a=started_at, b=ended_at)
            errors = scalar(state, "SELECT count(*) FROM popflow_runs WHERE finished_at > :a AND finished_at <= :b "
                            "AND error IS NOT NULL", a=started_at, b=ended_at)
            seconds = (ended_at - started_at).total_seconds()
            result: dict[str, float] = {"workers": workers, "threads": workers * concurrency,
                                        "polls/s": polls / seconds, "poll errors": errors}
            for name in cpu1:
                result[f"CPU ms/poll: {name}"] = (cpu1[name] - cpu0[name]) / max(polls, 1) * 1000
            result["machine busy %"] = 100 * (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1)

            # Messages: fill every mailbox, time the drain into the PostgreSQL sink.
            expected = per_box * len(boxes)
            began = time.monotonic()
            for index, box in enumerate(boxes):
                for number in range(per_box):
                    box.deliver(sample_message(offset + index * per_box + number))
            wait_until(lambda: scalar(state, "SELECT count(*) FROM sink_messages") >= expected, 600, interval=0.2,
                       what="every message in the sink")
            drained = time.monotonic() - began
            wait_until(lambda: sum(box.count() for box in boxes) == 0, 60, what="every mailbox empty")
            result["messages"] = expected
            result["messages/s"] = expected / drained
            result["duplicates"] = scalar(state, "SELECT count(*) - count(DISTINCT message_id) FROM sink_messages")
            codes = [proc.terminate(60) for proc in procs]
            result["exit codes nonzero"] = sum(1 for code in codes if code)
        finally:
            os.environ.pop("POPFLOW_SECRET_KEY", None)
            for proc in procs:
                if proc.process.poll() is None:
                    proc.kill_group()
            purge_queue(broker, queue)
    return result


def breakdown_run(folder: Path, server: DovecotServer, box: DovecotServer, port: int, rounds: int,
                  context_cache: bool) -> dict[str, float]:
    with pg_schema() as state:
        run_dir = folder / f"breakdown-{port}-{context_cache}"
        run_dir.mkdir()
        config = write_config(run_dir, state, broker_url("redis"), queue_name())
        import_sources(config, [box], port, server.ca_file, "1m")
        os.environ["POPFLOW_SECRET_KEY"] = KEY
        try:
            return empty_poll_breakdown(config, "box0000", rounds, context_cache)
        finally:
            os.environ.pop("POPFLOW_SECRET_KEY", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mailboxes", type=int, default=200)
    parser.add_argument("--rtt", default="20ms", help="round-trip time the proxy adds")
    parser.add_argument("--concurrency", type=int, default=4, help="threads per worker")
    parser.add_argument("--window", type=float, default=25.0, help="seconds of empty polls measured")
    parser.add_argument("--messages", type=int, default=10, help="messages per mailbox in the drain phase")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--rounds", type=int, default=40, help="empty polls in the breakdown")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-breakdown", action="store_true")
    args = parser.parse_args()
    rtt = parse_duration(args.rtt)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (processes, Dovecot) on SIGTERM too
    import tempfile

    server = start_dovecot()
    proxy, proxy_port = start_proxy(server.tls_port, rtt)
    folder = Path(tempfile.mkdtemp(prefix="popflow-scale-"))
    try:
        run = os.urandom(3).hex()
        boxes = [server.add_user(f"s{run}{index:04d}", f"pw-{os.urandom(6).hex()}") for index in range(args.mailboxes)]
        print(f"# {args.mailboxes} mailboxes on Dovecot (implicit TLS) behind a delaying proxy, "
              f"RTT {rtt * 1000:.0f} ms; {os.cpu_count()} CPUs shared with other jobs; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        shown_rtt = f"RTT {rtt * 1000:.0f} ms"
        steps = [("RTT 0 (direct)", server.tls_port, True), (shown_rtt, proxy_port, True),
                 (f"{shown_rtt}, a new TLS context per poll (before)", proxy_port, False)]
        for label, port, cache in [] if args.skip_breakdown else steps:
            figures = breakdown_run(folder, server, boxes[0], port, args.rounds, cache)
            print(f"\n## empty poll, {label}: mean of {args.rounds} polls, ms")
            for key, value in figures.items():
                print(f"{key:55s} {value:8.2f}")
        if args.skip_throughput:
            return
        print(f"\n## throughput: {args.mailboxes} sources every 1s, {args.concurrency} threads per worker, "
              f"{args.window:.0f}s window, then {args.messages} messages per mailbox", flush=True)
        offset = 0
        for workers in (int(n) for n in args.workers.split(",")):
            result = throughput(folder, server, boxes, proxy_port, workers, args.concurrency, args.window,
                                args.messages, offset)
            offset += args.messages * args.mailboxes
            print("  ".join(f"{key}={value:.1f}" if isinstance(value, float) else f"{key}={value}"
                            for key, value in result.items()), flush=True)
    finally:
        proxy.terminate()
        server.stop()


if __name__ == "__main__":
    main()
