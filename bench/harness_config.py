"""The popflow config the harness runs (``bench/popflow_fetch.sh maildir``), for benchmarks of our own.

One definition for ``cpu_profile.py``, ``startup.py`` and ``network_poll.py``: a POP3 source on
loopback, a ``folder`` sink with ``layout: maildir`` and default options, the SQLite state store, one
header filter and two routes: what a user gets by default.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def write_maildir_config(work: Path, port: int, maildir: Path, *, username: str = "user", password: str = "pass",
                         source_options: Iterable[str] = ()) -> Path:
    """Write ``work/popflow.yaml``; ``source_options`` are extra YAML lines for the source."""
    config = work / "popflow.yaml"
    lines = [
        f"state: sqlite:///{work}/popflow-state.db", f"data_dir: {work}/popflow-data", "log_level: WARNING",
        "sources:", "  bench:", "    type: pop3", "    host: 127.0.0.1", f"    port: {port}", "    tls: none",
        "    allow_insecure: true", f"    username: {username}", f"    password: '{password}'",
        "    keep_on_server: false", *(f"    {line}" for line in source_options),
        "sinks:", "  maildir:", "    type: folder", "    layout: maildir", f"    path: {maildir}",
        "filters:", "  - drop: {subject: '^\\[SPAM\\]'}",
        "routes:", "  - match: {subject: '(?i)invoice'}", "    sinks: [maildir]", "    stop: true",
        "  - sinks: [maildir]", "",
    ]
    config.write_text("\n".join(lines), encoding="utf-8")
    return config
