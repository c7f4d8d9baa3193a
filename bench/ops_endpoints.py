"""How fast the operator endpoints answer on a grown state store: /metrics, /readyz, the status page,
and ``popflow status``'s per-source query, for S sources with R polls each in ``popflow_runs``.

    .venv/bin/python bench/ops_endpoints.py                  # 50 sources x 2000 polls, SQLite
    .venv/bin/python bench/ops_endpoints.py --sources 500 --runs 200 --state postgresql+psycopg://...

Prints one line per measurement (median of --reps requests). The runs table has no index on
``source``: the status queries read the newest rows first by primary key, which this measures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import insert

from popflow.app import App
from popflow.config import parse_config
from popflow.ops.listen import ListenAddress
from popflow.ops.server import OpsServer
from popflow.ops.snapshot import source_status
from popflow.state_tables import runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=50)
    parser.add_argument("--runs", type=int, default=2000, help="polls per source")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--state", default=None, help="state URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = args.state or f"sqlite:///{Path(tmp) / 'state.db'}"
        source = {"host": "127.0.0.1", "port": 1, "tls": "none", "allow_insecure": True, "username": "u",
                  "password": "p"}
        names = [f"mailbox-{n:04d}" for n in range(args.sources)]
        app = App(parse_config({"state": state, "data_dir": str(Path(tmp) / "data"),
                                "sources": {name: source for name in names}}))
        stamp = datetime.now(UTC)
        started = time.perf_counter()
        with app.state.transaction() as connection:
            for poll in range(args.runs):  # interleaved, as a scheduler writes them
                connection.execute(insert(runs), [
                    {"source": name, "started_at": stamp, "finished_at": stamp,
                     "status": "failed" if (poll + index) % 7 == 0 else "ok", "counts": {"fetched": 1},
                     "error": None} for index, name in enumerate(names)])
        print(f"state: {app.state.shown_url}; {args.sources} sources x {args.runs} polls = "
              f"{args.sources * args.runs} rows in popflow_runs (written in {time.perf_counter() - started:.1f}s)")
        ops = OpsServer(app, None, ListenAddress("127.0.0.1", 0), sources=names)
        ops.attach()
        ops.start()
        try:
            for path in ("metrics", "readyz", ""):
                timings = []
                for _ in range(args.reps):
                    begin = time.perf_counter()
                    with urllib.request.urlopen(f"{ops.url}{path}", timeout=60) as response:
                        size = len(response.read())
                    timings.append(time.perf_counter() - begin)
                print(f"GET /{path:<8} median {statistics.median(timings) * 1000:8.1f} ms  ({size} bytes)")
            timings = []
            for _ in range(args.reps):
                begin = time.perf_counter()
                for name in names:
                    source_status(app.state, name)
                timings.append(time.perf_counter() - begin)
            print(f"popflow status queries, all {args.sources} sources: median "
                  f"{statistics.median(timings) * 1000:.1f} ms")
        finally:
            ops.close()
            app.close()


if __name__ == "__main__":
    main()
