#!/usr/bin/env python3
"""CPU per message of each step of the default path, in-process, without a profiler's distortion.

Builds the app from the config ``bench/popflow_fetch.sh maildir`` writes (``bench/harness_config.py``'s
``write_maildir_config``) and runs the poller's per-message steps over ``--messages`` small messages in
batches of 100, the way :class:`popflow.poller.Poller` does, timing each step with
``getrusage`` (user and system CPU of this process, reported apart): receiving the bytes into a
:class:`~popflow.raw.RawMessage`, the header digest, ``Pipeline.prepare`` (parse, scan, filter,
transform, route through pluggy), ``Deliverer.deliver`` (Maildir writes and the batch's commit) and
``Deliverer.record`` (the ledger). Best of ``--passes`` passes, each into a fresh Maildir and
state store::

    .venv/bin/python bench/cpu_stages.py --messages 2000 --passes 5
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness_config import write_maildir_config
from memory import small_message

from popflow.app import App
from popflow.config import load_config
from popflow.outcome import Outcome
from popflow.raw import RawMessage
from popflow.sources.base import Listing
from popflow.sources.keys import header_digest


def one_pass(messages: list[bytes], scratch: Path) -> dict[str, list[float]]:
    """``[user, system]`` CPU seconds per step for one pass over ``messages``."""
    work = Path(tempfile.mkdtemp(prefix="stages-", dir=scratch))
    app = App(load_config(write_maildir_config(work, 110, work / "Maildir")))
    app.prepare_data_dir()
    pipeline, deliverer = app.pipeline(), app.deliverer()
    spent: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])

    def clock() -> tuple[float, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime, usage.ru_stime

    def add(step: str, before: tuple[float, float], after: tuple[float, float]) -> None:
        spent[step][0] += after[0] - before[0]
        spent[step][1] += after[1] - before[1]

    listings = [Listing(i + 1, f"uidl-{i}", len(m), server_uidl=f"uidl-{i}") for i, m in enumerate(messages)]
    for start in range(0, len(messages), 100):
        batch = list(zip(listings[start:start + 100], messages[start:start + 100], strict=True))
        deliveries, outcomes, heads = [], [], {}
        for listing, data in batch:
            t0 = clock()
            raw = RawMessage.from_chunks(iter([data[i:i + 65536] for i in range(0, len(data), 65536)]))
            t1 = clock()
            heads[listing.uidl] = header_digest(raw.head())
            t2 = clock()
            prepared = pipeline.prepare(raw, "bench", listing.uidl)
            t3 = clock()
            add("receive (RawMessage)", t0, t1)
            add("header digest", t1, t2)
            add("Pipeline.prepare", t2, t3)
            if isinstance(prepared, Outcome):
                outcomes.append((listing, prepared))
            else:
                deliveries.append((listing, prepared))
        t0 = clock()
        delivered = deliverer.deliver([d for _, d in deliveries])
        t1 = clock()
        results = outcomes + [(listing, o) for (listing, _), o in zip(deliveries, delivered, strict=True)]
        deliverer.record("bench", results, mailbox="m", heads=heads)
        t2 = clock()
        add("Deliverer.deliver", t0, t1)
        add("Deliverer.record", t1, t2)
    deliverer.close()
    app.close()
    shutil.rmtree(work, ignore_errors=True)
    return spent


def main() -> int:
    """Run the passes and print the best per-message figure of each step."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: in /tmp)")
    parser.add_argument("--plugins", action="store_true", help="load installed plugins too (default: none)")
    args = parser.parse_args()
    if not args.plugins:
        os.environ["POPFLOW_LOAD_PLUGINS"] = ""  # what the harness has: popflow alone
    rng = random.Random(42)
    messages = [small_message(i, rng) for i in range(args.messages)]
    scratch = Path(tempfile.mkdtemp(prefix="popflow-stages-", dir=args.dir))
    best: dict[str, list[float]] = {}
    try:
        for _ in range(args.passes):
            spent = one_pass(messages, scratch)
            spent["total"] = [sum(v[0] for v in spent.values()), sum(v[1] for v in spent.values())]
            for step, (user, system) in spent.items():
                if step not in best or user < best[step][0]:
                    best[step] = [user, system]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{'step':24s} {'user µs/msg':>12s} {'sys µs/msg':>11s}   (pass with the least user CPU)")
    for step, (user, system) in best.items():
        print(f"{step:24s} {user / len(messages) * 1e6:12.1f} {system / len(messages) * 1e6:11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
