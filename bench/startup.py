#!/usr/bin/env python3
"""The start-up cost of one ``popflow poll``: CPU (user + system) of the whole process, old vs new.

The benchmark harness runs ``popflow -q poll -c CONFIG`` once per run (``bench/popflow_fetch.sh``),
so everything popflow does before its first POP3 command is paid once per run. This driver serves
a mailbox from popflow's own POP3 server (:class:`popflow.testing.POP3TestServer`, in this
process), writes the config ``popflow_fetch.sh`` writes (POP3 source, ``folder`` sink with
``layout: maildir``, SQLite state store, a header filter, two routes) and runs the poll in a child
process, many times, alternating between source trees (``--tree NAME=PATH``, each put first on
``PYTHONPATH``, so an old checkout can be compared with the working tree in one venv). Every run
gets a fresh work folder (a new state store and Maildir, as the harness does), or with
``--keep-state`` the same state store each time; every run is checked (all messages in ``new/``).

The CPU figure is the child's ``ru_utime + ru_stime`` from ``os.wait4``; the server's CPU is not in
it. Byte-compile both trees first (``python -m compileall -q TREE/popflow``): the harness installs
popflow with pip, which writes ``.pyc`` files, and ``PYTHONDONTWRITEBYTECODE`` would otherwise make
every run compile popflow from source.

    .venv/bin/python bench/startup.py --tree old=/tmp/base --tree new=. --runs 20
    .venv/bin/python bench/startup.py --tree old=/tmp/base --tree new=. --runs 5 --maildir /tmp/mix/Maildir
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness_config import write_maildir_config

from popflow.testing import POP3TestServer
from popflow.testing.mailbox import load_folder


@dataclass
class Tree:
    """One popflow source tree and what its runs measured."""

    name: str
    path: Path
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)


def run_once(tree: Tree, messages: list[bytes], work: Path, keep_state: bool) -> None:
    """One poll by ``tree``'s popflow; appends its CPU and wall time, raises if it was not clean."""
    if not keep_state:
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(work / "Maildir", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tree.path)
    with POP3TestServer(messages) as server:
        config = write_maildir_config(work, server.port, work / "Maildir")
        started = time.perf_counter()
        with open(work / "poll.out", "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "popflow", "-q", "poll", "-c", str(config)],
                                    stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work)
            _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        server.wait_idle()
        left = len(server.messages())
    new = work / "Maildir" / "new"
    delivered = len(list(new.iterdir())) if new.is_dir() else 0
    if proc.returncode != 0 or delivered != len(messages) or left:
        raise SystemExit(f"{tree.name}: exit {proc.returncode}, delivered {delivered}/{len(messages)}, {left} left\n"
                         + (work / "poll.out").read_text(errors="replace")[-3000:])
    tree.cpu.append(usage.ru_utime + usage.ru_stime)
    tree.wall.append(wall)


def main() -> None:
    """Parse the options, run the polls alternately, print min/median per tree."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=PATH",
                        help="a popflow source tree (the folder holding popflow/); repeat to compare")
    parser.add_argument("--runs", type=int, default=20, help="polls per tree (default 20)")
    parser.add_argument("--maildir", type=Path, help="serve these messages (a Maildir or folder); default: none")
    parser.add_argument("--keep-state", action="store_true", help="reuse one state store (default: a new one per run)")
    args = parser.parse_args()
    trees = [Tree(name, Path(path).resolve()) for name, _, path in (t.partition("=") for t in args.tree)]
    messages = load_folder(args.maildir) if args.maildir else []
    scratch = Path(tempfile.mkdtemp(prefix="popflow-startup-"))
    try:
        for index in range(args.runs):
            for tree in trees if index % 2 == 0 else reversed(trees):  # A B B A: neither always goes first
                run_once(tree, messages, scratch / tree.name, args.keep_state)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{len(messages)} messages, {args.runs} polls per tree, "
          f"{'one state store' if args.keep_state else 'a new state store per poll'}")
    print("| tree | CPU ms min | CPU ms median | wall ms min | wall ms median |")
    print("|---|---|---|---|---|")
    for tree in trees:
        print(f"| {tree.name} | {min(tree.cpu) * 1000:.0f} | {statistics.median(tree.cpu) * 1000:.0f} "
              f"| {min(tree.wall) * 1000:.0f} | {statistics.median(tree.wall) * 1000:.0f} |")
    base = trees[0]
    for tree in trees[1:]:
        print(f"{tree.name} / {base.name}: CPU median {statistics.median(tree.cpu) / statistics.median(base.cpu):.2f}, "
              f"min {min(tree.cpu) / min(base.cpu):.2f}")


if __name__ == "__main__":
    main()
