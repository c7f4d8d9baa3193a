"""IMAP IDLE latency: a message dropped into Dovecot's Maildir → delivered by ``popflow run``'s scheduler.

    .venv/bin/python bench/imap_idle.py                  # 20 messages, implicit TLS, after: delete
    .venv/bin/python bench/imap_idle.py --messages 50 --after seen

Starts a private Dovecot (tests/support/dovecot.py; needs root and dovecot-imapd), then the
scheduler exactly as ``popflow run`` does, with ``idle: true`` and ``every: 1h`` (so only IDLE can
deliver in time). Each message is dropped into ``Maildir/new`` once the previous one is in the sink,
after a random 0.1-0.5 s pause; the time until its file appears in the sink's Maildir is measured.
Prints the median, p95 and max in milliseconds (and how much of it passed before the watcher saw
``* N EXISTS`` and woke the scheduler), and checks every message arrived exactly once.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from popflow.scheduler import PollScheduler  # noqa: E402
from tests.support.dovecot import start_dovecot  # noqa: E402
from tests.support.imap import write_imap_config  # noqa: E402
from tests.support.killing import maildir_ids  # noqa: E402
from tests.support.pipeline import make_app, sample_message  # noqa: E402


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (``share`` in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def wait_until(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.002)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--after", default="delete", help="delete | seen | move:FOLDER")
    args = parser.parse_args()
    server = start_dovecot()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            config = write_imap_config(root, server, idle=True, every="1h", after=args.after)
            scheduler = PollScheduler(make_app(config))
            woken: list[float] = []
            wake = scheduler.wake

            def timed_wake(name: str) -> None:  # when the watcher saw EXISTS: the server's share
                woken.append(time.perf_counter())
                wake(name)

            scheduler.wake = timed_wake  # type: ignore[method-assign]
            scheduler.start()
            try:
                if not wait_until(lambda: "imap" in scheduler.reports, 30):
                    raise SystemExit("the first poll did not finish")
                time.sleep(1.0)  # the watcher logs in and IDLEs
                sink = root / "mail"
                latencies: list[float] = []
                notified: list[float] = []
                for index in range(args.messages):
                    time.sleep(random.uniform(0.1, 0.5))
                    key = f"<msg-{index}@example.org>"
                    woken.clear()
                    started = time.perf_counter()
                    server.deliver(sample_message(index))
                    if not wait_until(lambda key=key: maildir_ids(sink)[key], 60):
                        raise SystemExit(f"message {index} was not delivered within 60 s")
                    latencies.append((time.perf_counter() - started) * 1000)
                    if woken:
                        notified.append((woken[0] - started) * 1000)
            finally:
                scheduler.stop()
            found = maildir_ids(root / "mail")
            assert found == Counter({f"<msg-{i}@example.org>": 1 for i in range(args.messages)}), found
    finally:
        server.stop()
    print(f"IMAP IDLE, dropped into the Maildir -> delivered (after: {args.after}, {args.messages} messages, "
          f"implicit TLS, every: 1h):")
    print(f"  median {statistics.median(latencies):.0f} ms   p95 {percentile(latencies, 0.95):.0f} ms   "
          f"max {max(latencies):.0f} ms   min {min(latencies):.0f} ms")
    if notified:
        print("  of which until IDLE reported EXISTS (the scheduler woken): "
              f"median {statistics.median(notified):.0f} ms   p95 {percentile(notified, 0.95):.0f} ms")


if __name__ == "__main__":
    main()
