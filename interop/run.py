"""``make interop``: run every server of interop/servers.py through every mode it supports.

    .venv/bin/python -m interop.run                 # all servers
    .venv/bin/python -m interop.run mailutils solid  # some
    INTEROP_OUT=interop-matrix.md                   # where the matrix goes (printed too)

A server that cannot be started is a row saying why; the exit status is 1 when any cell failed.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import poplib
import sys
import tempfile
import time
import traceback
from pathlib import Path

from interop.check import Outcome, lock_probe, run_mode, served
from interop.common import MailUser, TestCA, Unavailable
from interop.messages import Message, all_messages, corpus_messages
from interop.servers import SERVERS, Server

LOCK = Path("/run/lock/popflow-interop.lock")


def run_server(cls: type[Server], user: MailUser, ca: TestCA, work: Path) -> tuple[Server, list[Outcome], str]:
    """Start one server, run its modes, stop it: (server, outcomes, why it did not run or "")."""
    folder = work / cls.name
    folder.mkdir(parents=True, exist_ok=True)
    server = cls(user=user, ca=ca, work=folder)
    messages = all_messages()
    outcomes: list[Outcome] = []
    try:
        server.start()
    except Unavailable as exc:
        return server, outcomes, str(exc)
    try:
        messages = _check_unservable(server, messages)
        if cls.modes[0].check == "keep-delete":
            server.fill(messages)
            try:
                server.notes.append(lock_probe(server, cls.modes[0]))
            except (poplib.error_proto, OSError) as exc:
                server.notes.append(f"lock probe failed: {exc}")
        for mode in cls.modes:
            try:
                outcomes.append(run_mode(server, mode, messages, folder))
            except Exception as exc:  # one broken mode must not hide the others
                failed = Outcome(mode.name)
                failed.fail(f"{type(exc).__name__}: {exc}")
                (folder / f"{mode.name}-error.txt").write_text(traceback.format_exc())
                outcomes.append(failed)
    finally:
        server.stop()
    return server, outcomes, ""


def _check_unservable(server: Server, messages: list[Message]) -> list[Message]:
    """Verify what the server claims it cannot serve (a login with every message), then drop those."""
    if not server.unservable:
        return messages
    server.fill(messages)
    try:
        served(server, server.modes[0])
        server.notes.append(f"expected refusal not seen: {'; '.join(server.unservable.values())}")
    except (poplib.error_proto, OSError) as exc:
        for name, what in server.unservable.items():
            server.notes.append(f"{what} ({exc}): '{name}' left out of the runs")
    return [m for m in messages if m.name not in server.unservable]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def matrix(rows: list[tuple[Server, list[Outcome], str]], message_count: int, seconds: float) -> str:
    lines = [f"Interop run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {message_count} messages "
             f"({len(corpus_messages())} from the corpus), {seconds:.0f} s",
             "",
             "| server | version | mode | result | checks | problems | quirks seen | popflow check --connect |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for server, outcomes, why in rows:
        if why:
            lines.append(f"| {server.name} | {server.version} | — | not run | 0 | {_cell(why)} | | |")
            continue
        for outcome in outcomes:
            quirks = sorted(set(outcome.quirks + server.notes))
            lines.append(f"| {server.name} | {server.version} | {outcome.mode} | "
                         f"{'pass' if outcome.ok else 'FAIL'} | {outcome.checks} | "
                         f"{_cell('; '.join(outcome.problems[:6]))} | {_cell('; '.join(quirks))} | "
                         f"{_cell('; '.join(dict.fromkeys(outcome.popflow_says)))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("servers", nargs="*", choices=[[], *SERVERS], help="servers to run (default: all)")
    parser.add_argument("--out", default=os.environ.get("INTEROP_OUT", "interop-matrix.md"))
    parser.add_argument("--work", help="keep the work folder here (default: a temporary one)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("make interop needs root: the servers authenticate a system user and switch to it", file=sys.stderr)
        return 2
    names = args.servers or list(SERVERS)
    started = time.monotonic()
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock, tempfile.TemporaryDirectory(prefix="popflow-interop-") as temporary:
        try:  # one run at a time: a run sets the mail user's password and empties the stores
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"another interop run holds {LOCK}", file=sys.stderr)
            return 2
        work = Path(args.work or temporary)
        user = MailUser.ensure()
        ca = TestCA.create(work / "ca")
        rows = []
        for name in names:
            print(f"[interop] {name} ...", file=sys.stderr, flush=True)
            rows.append(run_server(SERVERS[name], user, ca, work))
        text = matrix(rows, len(all_messages()), time.monotonic() - started)
    Path(args.out).write_text(text)
    print(text)
    print(f"[interop] matrix written to {args.out}", file=sys.stderr)
    return 0 if all(not why and all(o.ok for o in outcomes) for _, outcomes, why in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
