"""``popflow demo``: serve the sample mailbox on loopback, write a config, run one real poll, summarise.

Everything goes through the same code as ``popflow poll``: the config is written to
``<dir>/popflow.yaml`` and loaded back with :func:`~popflow.config.load_config`, the transform
plugin is loaded from ``<dir>/plugins/`` like any user's plugin, and the poll is
:meth:`popflow.app.App.poll`.

Re-running: each run starts from scratch. A folder the demo made holds a marker file
(``.popflow-demo``); on start the demo removes what its previous run left there (state, data,
mail, ``orders.db``) and writes everything again. A non-empty folder without the marker is never
touched: the demo refuses it. (Keeping the state would work too — the ledger would recognise the
same UIDLs and delete them without delivering them twice — but then the demo would show nothing.)
"""

from __future__ import annotations

import shutil
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from popflow import Message, hookimpl
from popflow.app import App
from popflow.config import load_config
from popflow.demo.mailbox import NEWSLETTER_DOMAIN, demo_messages
from popflow.poller import PollReport
from popflow.testing import POP3TestServer

MARKER = ".popflow-demo"
DEMO_FILES = ("popflow.yaml", "popflow-state.db", "popflow-state.db-wal", "popflow-state.db-shm", "orders.db",
              "orders.db-wal", "orders.db-shm", "popflow-data", "mail", "plugins")
"""What a demo run creates in its folder, and so what the next run may remove."""
SOURCE = "demo"
USERNAME, PASSWORD = "demo", "demo-password"

CONFIG_TEMPLATE = """\
# Written by `popflow demo` (rewritten on every run). Try: popflow check -c {config}
# The POP3 server was popflow's own test server on a random loopback port; it stopped with the demo.
state: sqlite:///popflow-state.db        # popflow's ledger: what was fetched, delivered, deleted
data_dir: ./popflow-data                  # spool, dead letters, quarantine
plugins_dir: ./plugins                    # demo_transform.py: tags, meta.order_number, meta.priority

sources:
  {source}:
    type: pop3
    host: 127.0.0.1
    port: {port}
    tls: none                             # loopback only; a real server needs implicit or starttls
    allow_insecure: true                  # required with tls: none
    username: {username}
    password: {password}
    every: 60s                            # used by `popflow run`; the demo polls once

filters:                                  # the first matching rule decides
  - drop: {{ from: "*@{newsletter}" }}

routes:                                   # every matching route's sinks get the message
  - match: {{ to: "orders@*", subject: "(?i)order #\\\\d+" }}
    sinks: [orders_db]
    stop: true                            # orders go only to the database
  - sinks: [mail]                         # everything else: the folder

sinks:
  mail: {{ type: folder, path: ./mail, layout: eml, attachments: true }}
  orders_db: {{ type: database, url: "sqlite:///orders.db", table_prefix: popflow_ }}
"""


class DemoDirError(Exception):
    """The chosen folder is not empty and was not made by the demo."""


class SinkTally:
    """Counts deliveries per sink through the ``popflow_delivered`` event hook."""

    def __init__(self) -> None:
        self.delivered: Counter[str] = Counter()

    @hookimpl
    def popflow_delivered(self, message: Message, sink: str) -> None:
        """Count one committed delivery."""
        self.delivered[sink] += 1


@dataclass
class DemoResult:
    """What the demo did and where its output is."""

    directory: Path
    config: Path
    report: PollReport
    served: int
    left_on_server: int
    per_sink: dict[str, int] = field(default_factory=dict)
    order_rows: int = 0
    folder_files: int = 0
    attachment_files: int = 0


def prepare_dir(directory: Path) -> None:
    """Create the folder, or clear what an earlier demo run left in it; refuse anyone else's folder."""
    if directory.exists() and not directory.is_dir():
        raise DemoDirError(f"{directory} exists and is not a folder")
    if directory.is_dir() and any(directory.iterdir()) and not (directory / MARKER).exists():
        raise DemoDirError(f"{directory} is not empty and was not made by `popflow demo`; "
                           "choose another folder with --dir")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # it will hold mail and a ledger
    for name in DEMO_FILES:
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    (directory / MARKER).write_text("made by `popflow demo`; the next run clears this folder's demo files\n")


def write_config(directory: Path, port: int) -> Path:
    """Write ``popflow.yaml`` and the transform plugin into ``directory``; return the config's path."""
    plugins = directory / "plugins"
    plugins.mkdir(exist_ok=True)
    plugin_source = resources.files("popflow.demo").joinpath("plugin.py").read_text(encoding="utf-8")
    (plugins / "demo_transform.py").write_text(plugin_source, encoding="utf-8")
    config = directory / "popflow.yaml"
    config.write_text(CONFIG_TEMPLATE.format(config=config, source=SOURCE, port=port, username=USERNAME,
                                             password=PASSWORD, newsletter=NEWSLETTER_DOMAIN), encoding="utf-8")
    config.chmod(0o600)  # it holds a password, even if only the demo's
    return config


def run_demo(directory: Path) -> DemoResult:
    """Serve the sample mailbox, poll it once through the real pipeline, and collect the results."""
    directory = directory.resolve()
    prepare_dir(directory)
    messages = demo_messages()
    tally = SinkTally()
    with POP3TestServer(messages, username=USERNAME, password=PASSWORD) as server:
        config_path = write_config(directory, server.port)
        app = App(load_config(config_path), extra_plugins=[tally])
        try:
            app.prepare_data_dir()
            report = app.poll(SOURCE)
        finally:
            app.close()
        left = len(server.messages())
    result = DemoResult(directory, config_path, report, served=len(messages), left_on_server=left,
                        per_sink=dict(tally.delivered))
    result.order_rows = _count_rows(directory / "orders.db")
    mail = directory / "mail"
    if mail.is_dir():
        result.folder_files = sum(1 for _ in mail.rglob("*.eml"))
        result.attachment_files = sum(1 for p in mail.rglob("*") if p.is_file() and not p.name.startswith(".")
                                      and p.suffix not in (".eml", ".json"))
    return result


def _count_rows(database: Path) -> int:
    if not database.exists():
        return 0
    with sqlite3.connect(database) as connection:
        try:
            return int(connection.execute("select count(*) from popflow_messages").fetchone()[0])
        except sqlite3.Error:
            return 0
