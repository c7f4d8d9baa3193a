#!/usr/bin/env python3
"""One `popflow poll` over a network with latency: wall and CPU time, several popflow installs side by side.

The shared harness runs on loopback, where a round trip costs nothing; a real mailbox is a few to a
hundred milliseconds away, and every exchange that waits for its reply pays that. This drives a
private Dovecot (``tests.support.dovecot``, root needed) through the delaying TCP proxy of
``bench/scale_out.py`` (``--rtt``; it does not delay the TCP handshake) and times `popflow poll` as
a child process (start-up included), with popflow's default config into a Maildir: the same config
``bench/popflow_fetch.sh maildir`` writes. Each ``--popflow NAME=PATH`` is an installed ``popflow``
executable (e.g. one built from ``main`` and one from a branch); runs alternate between them.

    .venv/bin/python bench/network_poll.py --popflow new=.venv/bin/popflow --popflow old=/opt/x/bin/popflow \\
        [-n 3000] [--rtt 0,0.02] [--reps 3] [--option 'pipeline_window: 64']

Prints one line per run and the median wall time per (install, RTT); every run is checked (all
messages in the Maildir, the server mailbox empty).
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.support
sys.path.insert(0, str(HERE))  # memory.small_message, scale_out.start_proxy

from harness_config import write_maildir_config  # noqa: E402
from memory import small_message  # noqa: E402
from scale_out import start_proxy  # noqa: E402

from tests.support.dovecot import DovecotServer, start_dovecot  # noqa: E402


def one_poll(popflow: str, server: DovecotServer, port: int, messages: list[bytes],
             options: list[str]) -> tuple[float, float]:
    """Fill the mailbox, poll it once; returns (wall seconds, client CPU seconds)."""
    server.reset()
    for data in messages:
        server.deliver(data)
    work = Path(tempfile.mkdtemp(prefix="popflow-netpoll-"))
    try:
        config = write_maildir_config(work, port, work / "Maildir", username=server.username,
                                      password=server.password, source_options=options)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run([popflow, "-q", "poll", "-c", str(config)], check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        delivered = len(list((work / "Maildir" / "new").iterdir()))
        if delivered != len(messages) or server.count() != 0:
            raise RuntimeError(f"{popflow}: delivered {delivered} of {len(messages)}, "
                               f"{server.count()} left on the server")
        return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    """Run every install at every RTT ``--reps`` times, alternating, and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--popflow", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("--rtt", default="0,0.02", help="comma list of round-trip times in seconds")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--option", action="append", default=[], help="an extra source option line (YAML)")
    args = parser.parse_args()
    installs = [item.split("=", 1) for item in args.popflow]
    rtts = [float(value) for value in args.rtt.split(",")]
    rng = random.Random(42)
    messages = [small_message(i, rng) for i in range(args.n)]
    server = start_dovecot()
    proxies = {rtt: start_proxy(server.port, rtt) for rtt in rtts if rtt > 0}
    walls: dict[tuple[str, float], list[float]] = {}
    try:
        for rep in range(args.reps):
            for rtt in rtts:
                port = proxies[rtt][1] if rtt > 0 else server.port
                for name, path in installs:
                    wall, cpu = one_poll(path, server, port, messages, args.option)
                    walls.setdefault((name, rtt), []).append(wall)
                    print(f"  rep {rep + 1} rtt {rtt * 1000:3.0f} ms {name:10s} {wall:6.2f} s  "
                          f"{args.n / wall:6.0f} msg/s  CPU {cpu:5.2f} s", flush=True)
    finally:
        for process, _port in proxies.values():
            process.terminate()
        server.stop()
    print(f"\n{args.n} small messages, median of {args.reps}, wall seconds [min-max] (msg/s)")
    for rtt in rtts:
        cells = []
        for name, _path in installs:
            runs = walls[(name, rtt)]
            median = statistics.median(runs)
            cells.append(f"{name} {median:.2f} [{min(runs):.2f}-{max(runs):.2f}] ({args.n / median:.0f})")
        print(f"rtt {rtt * 1000:3.0f} ms: " + "   ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
