#!/usr/bin/env python3
"""Does a poll's cost follow the mailbox or the ledger's history? (docs/performance.md, "Ledger growth")

Times ``popflow poll`` (a child process, as a user runs it) of a mailbox served by popflow's own POP3
server, into a Maildir with the default SQLite state store, in two states of the ledger:

* ``fresh``: a new state store;
* ``history``: the same source after ``--history`` messages (default 30,000) were handled and
  deleted — built by real polls of batches of small messages, so the rows are what popflow writes.

For each, ``--rounds`` polls of an empty mailbox and of a mailbox with ``--new`` new messages
(default 20). Prints the median wall time of each and the ratio history / fresh.

    .venv/bin/python bench/ledger_growth.py [--history 30000] [--new 20] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from popflow.testing import POP3TestServer


def message(index: int) -> bytes:
    return (f"From: a@example.org\r\nTo: b@example.org\r\nSubject: message {index}\r\n"
            f"Message-ID: <ledger-{index}@example.org>\r\n\r\nHello {index}.\r\n").encode()


def write_config(folder: Path, server: POP3TestServer) -> Path:
    path = folder / "popflow.yaml"
    path.write_text(yaml.safe_dump({
        "state": "sqlite:///state.db", "data_dir": "./data",
        "sources": {"inbox": {"type": "pop3", "host": server.host, "port": server.port, "tls": "none",
                              "allow_insecure": True, "username": server.username,
                              "password": server.password}},
        "sinks": {"archive": {"type": "folder", "path": "./mail", "layout": "maildir"}},
        "routes": [{"sinks": ["archive"]}],
    }))
    return path


def poll(popflow: str, config: Path) -> float:
    started = time.perf_counter()
    subprocess.run([popflow, "poll", "-c", str(config)], check=True, capture_output=True)
    return time.perf_counter() - started


def measure(popflow: str, config: Path, server: POP3TestServer, new: int, rounds: int,
            start: int) -> tuple[float, float]:
    empty = [poll(popflow, config) for _ in range(rounds)]
    with_new = []
    for round_number in range(rounds):
        for index in range(new):
            server.add(message(start + round_number * new + index))
        with_new.append(poll(popflow, config))
        assert len(server.messages()) == 0, "the poll left messages on the server"
    return statistics.median(empty), statistics.median(with_new)


def build_history(popflow: str, config: Path, server: POP3TestServer, count: int, batch: int = 5000) -> None:
    for start in range(0, count, batch):
        for index in range(start, min(count, start + batch)):
            server.add(message(10_000_000 + index))
        poll(popflow, config)
        print(f"  history: {min(count, start + batch)} messages handled and deleted", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--popflow", default=str(Path(sys.executable).with_name("popflow")))
    parser.add_argument("--history", type=int, default=30_000)
    parser.add_argument("--new", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    results = {}
    with POP3TestServer([]) as server, tempfile.TemporaryDirectory() as tmp:
        fresh_dir, history_dir = Path(tmp, "fresh"), Path(tmp, "history")
        fresh_dir.mkdir()
        history_dir.mkdir()
        results["fresh"] = measure(args.popflow, write_config(fresh_dir, server), server, args.new, args.rounds, 0)
        history_config = write_config(history_dir, server)
        build_history(args.popflow, history_config, server, args.history)
        results["history"] = measure(args.popflow, history_config, server, args.new, args.rounds, 1_000_000)
    print(f"ledger growth: median of {args.rounds} `popflow poll` runs (wall time, including start-up)")
    print(f"{'ledger':<28} {'empty mailbox':>14} {f'{args.new} new messages':>18}")
    for name, (empty, with_new) in results.items():
        label = "fresh" if name == "fresh" else f"after {args.history:,} handled"
        print(f"{label:<28} {empty * 1000:>11.0f} ms {with_new * 1000:>15.0f} ms")
    (fresh_empty, fresh_new), (history_empty, history_new) = results["fresh"], results["history"]
    print(f"{'ratio history / fresh':<28} {history_empty / fresh_empty:>13.2f}x {history_new / fresh_new:>17.2f}x")


if __name__ == "__main__":
    main()
