#!/usr/bin/env python3
"""Client CPU per message of ``popflow poll`` on the default path, split into start-up and per message.

The workload: ``--messages`` small messages (``bench/memory.py``'s ``small_message``, ~4.6 KB)
served by popflow's own POP3 server (:class:`popflow.testing.POP3TestServer`, in this process),
polled once by ``popflow poll`` in a child process into a ``folder`` sink with ``layout: maildir``
and default options, with the default pipeline: the config ``bench/popflow_fetch.sh maildir``
writes (built-in parser in its headers-first mode, one header filter, two routes). Every run is
checked: every message in ``new/``, the server's mailbox empty.

The child's user and system CPU are this process's children's times around the poll; the
server's CPU stays in this process (threads). Start-up is the CPU of the same poll of an empty
mailbox (fresh state store too), and the per-message figure is ``(CPU(N) - CPU(0)) / N``.
With ``--instructions`` the child runs under
``valgrind --tool=cachegrind --cache-sim=no`` and the figure is instructions (robust on a noisy
machine, ~50x slower).

Variants compare versions of the code alternately (A, B, A, B, ...) in one run: ``--variant
NAME=DIR`` puts ``DIR`` (a folder holding a ``popflow`` package, e.g. from ``git archive``) first
on the child's ``PYTHONPATH``; the default variant is the installed popflow::

    git archive main popflow | tar -x -C /tmp/base
    .venv/bin/python bench/cpu_profile.py --messages 5000 --reps 5 --variant base=/tmp/base --variant new=.

``--profile FILE`` runs one poll under cProfile instead and writes its stats to ``FILE``.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness_config import write_maildir_config
from memory import small_message

from popflow.testing import POP3TestServer

PLUGINS = False
"""Load the installed plugin packages in the child (``--plugins``); the harness has none."""


# ``python -m cProfile`` writes its stats after the program returns, but ``popflow poll`` leaves
# through os._exit (popflow.cli's fast exit): the child profiles the command line itself and turns
# the fast exit back into SystemExit, so the stats are written.
PROFILED_POLL = """
import cProfile, sys
import popflow.cli as cli
def _exit(code):
    raise SystemExit(code)
cli._exit_now = _exit
out = sys.argv.pop(1)
sys.argv[0] = "popflow"
profiler = cProfile.Profile()
try:
    profiler.runcall(cli.main)
except SystemExit as stop:
    status = stop.code
else:
    status = 0
profiler.dump_stats(out)
sys.exit(status)
"""


@dataclass
class Run:
    """The CPU of one poll."""

    variant: str
    count: int
    user: float
    system: float
    instructions: int | None = None


def poll_once(messages: list[bytes], scratch: Path, variant: str, path: str | None,
              instructions: bool = False, profile: Path | None = None) -> Run:
    """Serve ``messages``, run one ``popflow poll`` in a child, check the delivery, return its CPU."""
    work = Path(tempfile.mkdtemp(prefix="cpu-", dir=scratch))
    maildir = work / "Maildir"
    env = dict(os.environ)
    if not PLUGINS:
        env["POPFLOW_LOAD_PLUGINS"] = ""  # what the harness installs: popflow alone, no plugin packages
    if path is not None:
        env["PYTHONPATH"] = os.path.abspath(path) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with POP3TestServer(messages) as server:
        config = write_maildir_config(work, server.port, maildir)
        command = [sys.executable, "-m", "popflow"]
        if profile is not None:
            command = [sys.executable, "-c", PROFILED_POLL, str(profile)]
        command += ["-q", "poll", "-c", str(config)]
        out_file = work / "cachegrind.out"
        if instructions:
            command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out_file}",
                       *command]
        # cwd: not the checkout, whose popflow/ would shadow a variant (python -m puts cwd first).
        proc = subprocess.run(command, env=env, cwd=work, capture_output=True, check=False)
        stdout, stderr = proc.stdout, proc.stderr
        server.wait_idle()
        left = len(server.messages())
    delivered = len(os.listdir(maildir / "new")) if (maildir / "new").is_dir() else 0
    if proc.returncode != 0 or delivered != len(messages) or left:
        raise SystemExit(f"{variant}: exit {proc.returncode}, delivered {delivered}/{len(messages)}, {left} left\n"
                         f"{stdout.decode()[-2000:]}{stderr.decode()[-2000:]}")
    count = None
    if instructions:
        found = re.search(rb"summary:\s+(\d+)", out_file.read_bytes())
        count = int(found.group(1)) if found else None
    shutil.rmtree(work, ignore_errors=True)
    return Run(variant, len(messages), 0.0, 0.0, count)


def timed_poll(messages: list[bytes], scratch: Path, variant: str, path: str | None,
               instructions: bool = False) -> Run:
    """:func:`poll_once` with the child's CPU taken from this process's children totals."""
    before = os.times()
    run = poll_once(messages, scratch, variant, path, instructions)
    after = os.times()
    run.user = after.children_user - before.children_user
    run.system = after.children_system - before.children_system
    return run


def main() -> int:
    """Measure, alternating the variants, and print start-up and per-message CPU for each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3, help="polls of N messages (and of 0) per variant")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=DIR",
                        help="a popflow package folder put first on PYTHONPATH (repeatable); default: installed")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp folder in /tmp)")
    parser.add_argument("--instructions", action="store_true", help="count instructions under cachegrind")
    parser.add_argument("--profile", type=Path, help="one poll under cProfile, stats to this file")
    parser.add_argument("--plugins", action="store_true", help="load installed plugins too (default: none)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    global PLUGINS
    PLUGINS = args.plugins

    rng = random.Random(args.seed)
    messages = [small_message(i, rng) for i in range(args.messages)]
    variants: list[tuple[str, str | None]] = [
        (spec.partition("=")[0], spec.partition("=")[2]) for spec in args.variant] or [("installed", None)]
    scratch = Path(tempfile.mkdtemp(prefix="popflow-cpu-", dir=args.dir))
    try:
        if args.profile:
            name, path = variants[-1]
            poll_once(messages, scratch, name, path, profile=args.profile)
            print(f"cProfile stats of one poll of {len(messages)} messages ({name}): {args.profile}")
            return 0
        runs: list[Run] = []
        for rep in range(args.reps):
            order = variants if rep % 2 == 0 else variants[::-1]
            for name, path in order:
                for batch in (messages, []):
                    started = time.perf_counter()
                    run = timed_poll(batch, scratch, name, path, args.instructions)
                    runs.append(run)
                    extra = f" {run.instructions:,} instr" if run.instructions is not None else ""
                    print(f"  rep {rep + 1} {name:>10s} N={run.count:5d}  user {run.user:6.2f}s  "
                          f"sys {run.system:5.2f}s{extra}  wall {time.perf_counter() - started:5.1f}s", flush=True)
        print()
        print(report(runs, variants, len(messages)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def report(runs: list[Run], variants: list[tuple[str, str | None]], count: int) -> str:
    """Start-up and per-message CPU per variant (min and median over the reps)."""
    lines = ["| variant | start-up user ms | per message user µs (min / median) | per message sys µs (median) |"
             + (" per message instructions (median) |" if runs[0].instructions is not None else ""),
             "|---|---|---|---|" + ("---|" if runs[0].instructions is not None else "")]
    medians: dict[str, float] = {}
    for name, _path in variants:
        full = [r for r in runs if r.variant == name and r.count]
        empty = [r for r in runs if r.variant == name and not r.count]
        start_user = statistics.median(r.user for r in empty)
        start_sys = statistics.median(r.system for r in empty)
        per_user = [(r.user - start_user) / count * 1e6 for r in full]
        per_sys = [(r.system - start_sys) / count * 1e6 for r in full]
        medians[name] = statistics.median(per_user)
        line = (f"| {name} | {start_user * 1e3:.0f} | {min(per_user):.0f} / {statistics.median(per_user):.0f} "
                f"| {statistics.median(per_sys):.0f} |")
        if runs[0].instructions is not None:
            start_ins = statistics.median(r.instructions or 0 for r in empty)
            per_ins = statistics.median(((r.instructions or 0) - start_ins) / count for r in full)
            line += f" {per_ins:,.0f} |"
        lines.append(line)
    if len(variants) > 1:
        base = variants[0][0]
        for name, _path in variants[1:]:
            lines.append(f"\n{name} / {base} per-message user CPU (medians): {medians[name] / medians[base]:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
