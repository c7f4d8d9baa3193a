#!/usr/bin/env python3
"""The memory workload: peak RSS of one ``popflow poll`` with large messages, and as the mailbox grows.

Serves a mailbox from popflow's own POP3 server (:class:`popflow.testing.POP3TestServer`, in this
process, PIPELINING advertised) and runs ``popflow poll`` in a child process under
``/usr/bin/time -v``, so the figure is the poll's own peak resident set size, not the server's.
Each case is delivered into a fresh Maildir (default config, delete mode) and checked:
every message delivered, the server mailbox empty.

Cases (sizes are of the messages as sent):

* ``large``: ``--large`` messages of ``--large-mb`` MB each (default 5 x 40 MB, a base64
  attachment) among ``--small`` small ones (default 500 x ~4 KB), large ones spread through the
  mailbox;
* ``large-db``: the same mailbox into a ``database`` sink with the full parse, ``store_raw: true``
  and ``store_attachments: true`` (every value a large message has is stored): SQLite by default,
  or the database at ``--db-url`` (e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/bench``;
  the case uses tables of its own prefix there and drops them afterwards);
* ``flat-1000`` and ``flat-10000``: 1,000 and 10,000 small messages; peak RSS should not grow.

Run by ``bench/run.sh`` with the popflow installed in its venv; on its own::

    .venv/bin/python bench/memory.py --popflow .venv/bin/popflow
    .venv/bin/python bench/memory.py --only large-db --db-url postgresql+psycopg://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import base64
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import MetaData, create_engine, text

from popflow.testing import POP3TestServer

RSS_TARGET_MB = 100.0


@dataclass
class Case:
    """One poll to measure."""

    name: str
    messages: list[bytes]
    sink: str = "maildir"
    """``maildir`` (a folder sink, defaults) or ``db`` (store_raw and store_attachments)."""
    db_url: str | None = None
    """The ``db`` sink's database; None: a SQLite file of the case's own."""
    prefix: str = "popflow_"
    """The ``db`` sink's table prefix (a fresh one per case on a server)."""


@dataclass
class Result:
    """What one poll used."""

    name: str
    count: int
    megabytes: float
    wall: float
    peak_rss_mb: float
    delivered: int
    ok: bool


def small_message(index: int, rng: random.Random, size: int = 4096) -> bytes:
    """A plain-text message of about ``size`` bytes with realistic headers."""
    words = [rng.choice(("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"))
             for _ in range(size // 6)]
    lines = [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
    return (
        f"Received: from mx{index % 7}.example.net by pop.example.org; Thu, 26 Nov 2026 10:00:00 +0000\r\n"
        f"From: Sender {index} <sender{index}@example.net>\r\n"
        f"To: bench@example.org\r\n"
        f"Subject: small message {index}\r\n"
        f"Date: Thu, 26 Nov 2026 10:{index % 60:02d}:00 +0000\r\n"
        f"Message-ID: <mem-small-{index}@example.net>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        + "\r\n".join(lines) + "\r\n"
    ).encode("ascii")


def large_message(index: int, megabytes: float, rng: random.Random) -> bytes:
    """A multipart message with one base64 attachment, ``megabytes`` MB in total."""
    payload_size = int(megabytes * 1_000_000 * 3 / 4) - 2048
    block = rng.randbytes(1 << 20)
    payload = (block * (payload_size // len(block) + 1))[:payload_size]
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (
        f"From: Big Sender <big{index}@example.net>\r\nTo: bench@example.org\r\n"
        f"Subject: large message {index}\r\nDate: Thu, 26 Nov 2026 11:00:00 +0000\r\n"
        f"Message-ID: <mem-large-{index}@example.net>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="b{index}"\r\n\r\n'
        f"--b{index}\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n"
        f'--b{index}\r\nContent-Type: application/octet-stream\r\n'
        f'Content-Disposition: attachment; filename="data{index}.bin"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode("ascii") + encoded + f"--b{index}--\r\n".encode("ascii")


def mixed_mailbox(small: int, large: int, large_mb: float, seed: int) -> list[bytes]:
    """``small`` small messages with ``large`` large ones spread evenly among them."""
    rng = random.Random(seed)
    messages = [small_message(i, rng) for i in range(small)]
    step = max(1, len(messages) // (large + 1))
    for n in range(large):
        messages.insert(min(len(messages), (n + 1) * step + n), large_message(n, large_mb, rng))
    return messages


def sink_config(case: Case, work: Path, maildir: Path) -> str:
    """The ``sinks:`` entry of one case."""
    if case.sink == "db":
        return ("  store:\n"
                "    type: database\n"
                f"    url: {case.db_url or f'sqlite:///{work}/mail.db'}\n"
                f"    table_prefix: {case.prefix}\n"
                "    store_raw: true\n"
                "    store_attachments: true\n")
    return ("  store:\n"
            "    type: folder\n"
            f"    path: {maildir}\n")


def write_config(work: Path, port: int, maildir: Path, case: Case) -> Path:
    """A popflow config for one case: the test server, one sink, the default pipeline."""
    config = work / "popflow.yaml"
    config.write_text(
        f"state: sqlite:///{work}/state.db\n"
        f"data_dir: {work}/data\n"
        "log_level: WARNING\n"
        "sources:\n"
        "  mem:\n"
        "    type: pop3\n"
        "    host: 127.0.0.1\n"
        f"    port: {port}\n"
        "    tls: none\n"
        "    allow_insecure: true\n"
        "    username: user\n"
        "    password: pass\n"
        "sinks:\n"
        + sink_config(case, work, maildir)
        + "routes:\n"
        "  - sinks: [store]\n",
        encoding="utf-8",
    )
    return config


def run_case(case: Case, popflow: str, scratch: Path) -> Result:
    """Serve ``case``, poll it once under ``/usr/bin/time -v`` and check the delivery."""
    work = scratch / case.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    maildir = work / "Maildir"
    megabytes = sum(len(m) for m in case.messages) / 1e6
    with POP3TestServer(case.messages) as server:
        config = write_config(work, server.port, maildir, case)
        started = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-v", popflow, "-q", "poll", "-c", str(config)],
                              capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        server.wait_idle()
        left = len(server.messages())
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    peak = int(found.group(1)) / 1024 if found else float("nan")
    delivered = stored_count(case, work, maildir)
    ok = proc.returncode == 0 and delivered == len(case.messages) and left == 0
    if not ok:
        print(f"{case.name}: exit {proc.returncode}, delivered {delivered}/{len(case.messages)}, "
              f"{left} left on the server\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    return Result(case.name, len(case.messages), megabytes, wall, peak, delivered, ok)


def stored_count(case: Case, work: Path, maildir: Path) -> int:
    """How many messages the case's sink holds: files in ``new/`` or rows of ``<prefix>messages``.

    On a database server the case's tables are dropped once counted.
    """
    if case.sink == "db" and case.db_url:
        engine = create_engine(case.db_url)
        try:
            tables = MetaData()
            tables.reflect(engine, only=lambda name, _meta: name.startswith(case.prefix))
            if f"{case.prefix}messages" not in tables.tables:
                return 0
            with engine.connect() as connection:
                found = int(connection.execute(text(f"select count(*) from {case.prefix}messages")).scalar_one())
            tables.drop_all(engine)
            return found
        finally:
            engine.dispose()
    if case.sink == "db":
        database = work / "mail.db"
        if not database.exists():
            return 0
        with closing(sqlite3.connect(database)) as connection:
            return int(connection.execute("select count(*) from popflow_messages").fetchone()[0])
    return len(list((maildir / "new").iterdir())) if (maildir / "new").is_dir() else 0


def summary(results: list[Result], large: int, large_mb: float, db_label: str = "SQLite") -> str:
    """The results as a Markdown table, with the verdict on each target."""
    lines = [
        "| case | messages | MB | wall s | peak RSS MB | delivered | ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.name} | {r.count:,} | {r.megabytes:.1f} | {r.wall:.2f} | {r.peak_rss_mb:.0f} "
                     f"| {r.delivered:,} | {'yes' if r.ok else 'NO'} |")
    by_name = {r.name: r for r in results}
    lines.append("")
    for name, label in (("large", "Maildir"), ("large-db", f"{db_label}, full parse, store_raw + store_attachments")):
        if name in by_name:
            peak = by_name[name].peak_rss_mb
            verdict = "met" if peak <= RSS_TARGET_MB and by_name[name].ok else "NOT met"
            lines.append(f"- Peak RSS with {large} x {large_mb:g} MB messages ({label}): {peak:.0f} MB "
                         f"(target <= {RSS_TARGET_MB:.0f} MB, every message delivered: {verdict}).")
    if "flat-1000" in by_name and "flat-10000" in by_name:
        low, high = by_name["flat-1000"].peak_rss_mb, by_name["flat-10000"].peak_rss_mb
        lines.append(f"- 1,000 -> 10,000 messages: {low:.0f} MB -> {high:.0f} MB "
                     f"({(high - low) / low * 100:+.0f}%).")
    return "\n".join(lines) + "\n"


def main() -> int:
    """Build the cases, run them, print and save the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--popflow", default=shutil.which("popflow") or "popflow", help="the popflow command")
    parser.add_argument("--large", type=int, default=5, help="number of large messages")
    parser.add_argument("--large-mb", type=float, default=40.0, help="size of each large message, MB")
    parser.add_argument("--small", type=int, default=500, help="small messages around the large ones")
    parser.add_argument("--flat", default="1000,10000", help="mailbox sizes for the flat-memory check")
    parser.add_argument("--no-db", action="store_true", help="skip the database-sink case")
    parser.add_argument("--db-url", help="the large-db case's database (SQLAlchemy URL; default a SQLite file)")
    parser.add_argument("--only", help="run only these cases (comma-separated names)")
    parser.add_argument("--out", type=Path, help="folder for summary.md")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    mailbox = mixed_mailbox(args.small, args.large, args.large_mb, args.seed)
    cases = [Case("large", mailbox)]
    if not args.no_db:
        # The same messages (one copy in this process); on a server, tables of the case's own.
        prefix = f"mem{uuid.uuid4().hex[:8]}_" if args.db_url else "popflow_"
        cases.append(Case("large-db", mailbox, sink="db", db_url=args.db_url, prefix=prefix))
    for count in (int(n) for n in args.flat.split(",") if n):
        rng = random.Random(args.seed)
        cases.append(Case(f"flat-{count}", [small_message(i, rng) for i in range(count)]))
    if args.only:
        cases = [case for case in cases if case.name in args.only.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="popflow-memory-") as scratch:
        for case in cases:
            result = run_case(case, args.popflow, Path(scratch))
            print(f"  {result.name:11s} {result.count:6d} msgs {result.megabytes:7.1f} MB  "
                  f"{result.wall:6.2f}s  peak RSS {result.peak_rss_mb:5.0f} MB  {'ok' if result.ok else 'FAILED'}")
            results.append(result)
            case.messages = []  # free the server's copy before the next case
    label = "SQLite" if not args.db_url else create_engine(args.db_url).dialect.name
    report = summary(results, args.large, args.large_mb, label)
    print()
    print(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.md").write_text(report, encoding="utf-8")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
