"""The source registry (``popflow sources ...``) on real SQLite and PostgreSQL, polled from a real Dovecot.

Every step is a real ``python -m popflow`` process. The password is distinctive, so the tests can
search for it — plain, base64, URL-encoded, JSON/repr-escaped — in every output and in the state
database itself, where only a Fernet token may hold it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import yaml
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from tests.support import dovecot as dovecot_support
from tests.support.dovecot import DovecotServer, free_port
from tests.support.pipeline import sample_message
from tests.support.scaleout import Proc, broker_url, pg_schema, purge_queue, queue_name, wait_until

dovecot_server = dovecot_support.dovecot_server

PASSWORD = "Rg-5e81d0+/DISTINCTIVE"
INPUTS = {"many.csv", "many.yaml"}
"""Files the tests write with the password in them (what the operator imports)."""


def forms(secret: str) -> set[str]:
    """The shapes a leaked secret takes: plain, URL-encoded, base64 (both alphabets), JSON-escaped."""
    raw = secret.encode()
    return {secret, quote(secret, safe=""), quote_plus(secret), base64.b64encode(raw).decode(),
            base64.urlsafe_b64encode(raw).decode(), base64.b64encode(raw).decode().rstrip("="),
            json.dumps(secret)[1:-1]}


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh state store: a SQLite file, or a private PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
    else:
        with pg_schema() as url:
            yield url


@pytest.fixture
def key() -> str:
    return Fernet.generate_key().decode()


def write_config(tmp_path: Path, state: str, **extra: object) -> Path:
    data = {"state": state, "data_dir": "./data", "log_level": "DEBUG",
            "sinks": {"out": {"type": "folder", "path": "./out"}}, "routes": [{"sinks": ["out"]}], **extra}
    path = tmp_path / "popflow.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    path.chmod(0o600)
    return path


def popflow(config: Path, *args: str, key: str | None, stdin: str | None = None,
            **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "POPFLOW_SECRET_KEY"}
    if key is not None:
        environment["POPFLOW_SECRET_KEY"] = key
    command = [sys.executable, "-m", "popflow", "-vv", *args[:2], "-c", str(config), *args[2:]]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=config.parent,
                          env={**environment, **env}, input=stdin)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr[-3000:])
    return result


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def registry_rows(state: str) -> list[dict[str, object]]:
    engine = create_engine(state)
    try:
        with engine.connect() as connection:
            return [dict(row) for row in connection.execute(
                text("SELECT name, options, secrets, enabled FROM popflow_sources ORDER BY name")).mappings()]
    finally:
        engine.dispose()


def listed(config: Path, key: str | None) -> dict[str, dict[str, object]]:
    result = ok(popflow(config, "sources", "list", "--json", key=key))
    return {row["name"]: row for row in map(json.loads, result.stdout.splitlines())}


def assert_no_password(results: list[subprocess.CompletedProcess[str]], state: str, root: Path) -> None:
    """No form of PASSWORD in any output, any file under ``root``, or any registry column but the token."""
    for form in forms(PASSWORD):
        for result in results:
            assert form not in result.stdout + result.stderr, (form, result.args)
        hits = [path for path in root.rglob("*") if path.is_file() and path.name not in INPUTS
                and form.encode() in path.read_bytes()]
        assert hits == [], (form, hits)
    for row in registry_rows(state):
        assert all(form not in json.dumps(row, default=str) for form in forms(PASSWORD)), row


def test_add_list_show_import_enable_disable_remove(tmp_path: Path, state_url: str, key: str) -> None:
    config = write_config(tmp_path, state_url)
    results = [ok(popflow(config, "sources", "add", "alpha", "--host", "pop.example.net", "--username", "alice",
                          "--password-env", "ALPHA_PW", "--every", "2m", "--timeout", "10s", key=key,
                          ALPHA_PW=PASSWORD))]
    (tmp_path / "many.yaml").write_text(yaml.safe_dump({"sources": {
        "beta": {"host": "pop.example.net", "username": "bob", "password_env": "BETA_PW", "cron": "*/5 * * * *"},
        "gamma": {"host": "pop.example.net", "username": "gina", "password_file": "/run/secrets/gamma",
                  "tls": "starttls"}}}))
    results.append(ok(popflow(config, "sources", "import", str(tmp_path / "many.yaml"), key=key, BETA_PW=PASSWORD)))
    (tmp_path / "many.csv").write_text("name,host,port,username,password,every,keep_on_server\n"
                                       f"delta,pop.example.net,1995,dan,{PASSWORD},30s,true\n"
                                       "epsilon,pop.example.net,,eve,plainpw-e1,,\n")
    results.append(ok(popflow(config, "sources", "import", str(tmp_path / "many.csv"), key=key)))

    rows = listed(config, key=None)  # listing needs no key
    assert sorted(rows) == ["alpha", "beta", "delta", "epsilon", "gamma"]
    assert rows["delta"]["port"] == 1995 and rows["delta"]["keep_on_server"] is True  # CSV cells typed
    assert rows["beta"]["cron"] == "*/5 * * * *" and rows["gamma"]["password_file"] == "/run/secrets/gamma"
    assert str(rows["alpha"]["password"]).startswith("*** (encrypted")
    assert "password" not in rows["gamma"]  # a password file is a path each worker reads, not a stored secret
    table = ok(popflow(config, "sources", "list", key=None))
    assert "alpha" in table.stdout and "encrypted" in table.stdout
    shown = ok(popflow(config, "sources", "show", "alpha", key=None))
    assert "username: alice" in shown.stdout and "password: *** (encrypted" in shown.stdout
    results += [table, shown]

    # The stored rows: options hold no secret; the token decrypts to it with the key, and only with it.
    stored = {row["name"]: row for row in registry_rows(state_url)}
    token = str(stored["alpha"]["secrets"]).split(":", 1)[1]
    assert json.loads(Fernet(key.encode()).decrypt(token.encode())) == {"password": PASSWORD}
    assert stored["gamma"]["secrets"] is None

    results.append(ok(popflow(config, "sources", "disable", "beta", "delta", key=None)))
    rows = listed(config, key=None)
    assert [name for name, row in rows.items() if not row["enabled"]] == ["beta", "delta"]
    check = ok(popflow(config, "check", key=key))  # the merged config: registry sources validated with the key
    assert "alpha" in check.stdout and "delta" in check.stdout
    results.append(check)
    results.append(ok(popflow(config, "sources", "enable", "delta", key=None)))
    results.append(ok(popflow(config, "sources", "remove", "alpha", "gamma", key=None)))
    rows = listed(config, key=None)
    assert sorted(rows) == ["beta", "delta", "epsilon"] and rows["delta"]["enabled"] and not rows["beta"]["enabled"]
    missing = popflow(config, "sources", "remove", "alpha", key=None)
    assert missing.returncode == 1 and "no registry source named 'alpha'" in missing.stderr

    # A name already in the registry needs --replace; --replace changes it.
    again = popflow(config, "sources", "add", "delta", "--host", "h", "--username", "u", "--password-env", "X",
                    key=key, X="another-pw")
    assert again.returncode == 2 and "already has source(s) delta" in again.stderr
    ok(popflow(config, "sources", "add", "delta", "--host", "h2", "--username", "u2", "--password-env", "X",
               "--replace", key=key, X="another-pw"))
    assert listed(config, key=None)["delta"]["host"] == "h2"
    assert_no_password([*results, again], state_url, tmp_path)


def test_bad_sources_are_refused_whole(tmp_path: Path, state_url: str, key: str) -> None:
    config = write_config(tmp_path, state_url)
    bad_port = popflow(config, "sources", "add", "x", "--host", "h", "--username", "u", "--port", "70000",
                       "--password-env", "X", key=key, X=PASSWORD)
    assert bad_port.returncode == 2 and "sources.x.port" in bad_port.stderr and "65535" in bad_port.stderr
    typo = popflow(config, "sources", "add", "x", "--host", "h", "--username", "u", "--set", "evry=1m",
                   "--password-env", "X", key=key, X=PASSWORD)
    assert typo.returncode == 2 and "sources.x.evry: unknown key" in typo.stderr
    no_key = popflow(config, "sources", "add", "x", "--host", "h", "--username", "u", "--password-env", "X",
                     key=None, X=PASSWORD)
    assert no_key.returncode == 2 and "no key is given to encrypt it" in no_key.stderr
    # One bad row in an import: nothing of the file is stored.
    (tmp_path / "s.csv").write_text("name,host,username,password,port\nfine,h,u,pw-fine1,110\nbad,h,u,pw-bad1,0\n")
    partial = popflow(config, "sources", "import", str(tmp_path / "s.csv"), key=key)
    assert partial.returncode == 2 and "sources.bad.port" in partial.stderr
    assert registry_rows(state_url) == []
    assert_no_password([bad_port, typo, no_key, partial], state_url, tmp_path)


def test_a_name_in_yaml_and_registry_is_a_config_error(tmp_path: Path, state_url: str, key: str) -> None:
    yaml_source = {"host": "127.0.0.1", "port": 9, "tls": "none", "allow_insecure": True, "username": "u",
                   "password_file": "/nonexistent"}
    config = write_config(tmp_path, state_url, sources={"shared": yaml_source})
    refused = popflow(config, "sources", "add", "shared", "--host", "h", "--username", "u",
                      "--password-env", "X", key=key, X=PASSWORD)
    assert refused.returncode == 2
    assert "source 'shared' is defined both in this file and in the source registry" in refused.stderr
    assert registry_rows(state_url) == []
    # The YAML file gains the name after the registry had it: every command that merges says so.
    ok(popflow(write_config(tmp_path, state_url), "sources", "add", "shared", "--host", "h", "--username", "u",
               "--password-env", "X", key=key, X=PASSWORD))
    config = write_config(tmp_path, state_url, sources={"shared": yaml_source})
    for args in (("poll",), ("check",), ("run",)):
        clash = popflow(config, *args, key=key)
        assert clash.returncode == 2, (args, clash.stderr)
        assert "sources.shared: source 'shared' is defined both in this file and in the source registry" \
            in clash.stderr, clash.stderr


def test_a_wrong_or_missing_key_is_a_clear_error(tmp_path: Path, state_url: str, key: str) -> None:
    config = write_config(tmp_path, state_url)
    ok(popflow(config, "sources", "add", "box", "--host", "h", "--username", "u", "--password-env", "X",
               key=key, X=PASSWORD))
    wrong_key = Fernet.generate_key().decode()
    wrong = popflow(config, "poll", key=wrong_key)
    assert wrong.returncode == 2
    assert "cannot decrypt the secrets of registry source 'box'" in wrong.stderr and "wrong key" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    missing = popflow(config, "poll", key=None)
    assert missing.returncode == 2 and "no key is given" in missing.stderr and "POPFLOW_SECRET_KEY" in missing.stderr
    garbage = popflow(config, "poll", key="not-a-key")
    assert garbage.returncode == 2 and "is not a Fernet key" in garbage.stderr
    # A key file (one key a line, the first encrypts), with an old key kept second for decrypting.
    keys = tmp_path / "registry.keys"
    keys.write_text(f"{wrong_key}\n{key}\n")
    config = write_config(tmp_path, state_url, secret_key_file="registry.keys")
    ok(popflow(config, "check", key=None))  # decrypts with the second key
    rotated = ok(popflow(config, "sources", "rekey", key=None))
    assert "re-encrypted 1 source(s)" in rotated.stdout
    keys.write_text(f"{wrong_key}\n")  # the old key is gone: the rows were re-encrypted with the new one
    ok(popflow(config, "check", key=None))
    assert_no_password([wrong, missing, garbage, rotated], state_url, tmp_path)


@pytest.mark.parametrize("mode", ["poll", "rotated", "run"])
def test_registry_source_polled_from_dovecot(tmp_path: Path, state_url: str, key: str,
                                             dovecot_server: DovecotServer, mode: str) -> None:
    box = dovecot_server.add_user(f"reg{os.urandom(3).hex()}", PASSWORD)
    for number in range(3):
        box.deliver(sample_message(number))
    config = write_config(tmp_path, state_url)
    add = ok(popflow(config, "sources", "add", "customer-1", "--host", box.host, "--port", str(box.tls_port),
                     "--ca-file", str(box.ca_file), "--username", box.username, "--password-file", "-",
                     key=key, stdin=PASSWORD + "\n"))
    if mode == "run":  # the local executor's scheduler: registry sources are scheduled like YAML ones
        os.environ["POPFLOW_SECRET_KEY"] = key
        try:
            runner = Proc.start("run", config, "run")
        finally:
            os.environ.pop("POPFLOW_SECRET_KEY", None)
        try:
            wait_until(lambda: box.count() == 0, 60, what="popflow run to drain the registry source")
        finally:
            assert runner.terminate() == 0, runner.log()[-2000:]
        log = runner.log()
        assert "poll customer-1: fetched=3 delivered=3" in log, log[-2000:]
        assert all(form not in log for form in forms(PASSWORD))
        assert len(list((tmp_path / "out").glob("*/*"))) == 3
        return
    polled = ok(popflow(config, "poll", key=key))
    assert "poll customer-1: fetched=3 delivered=3" in polled.stderr, polled.stderr[-2000:]
    assert len(list((tmp_path / "out").glob("*/*"))) == 3
    assert box.count() == 0
    again = ok(popflow(config, "poll", key=key))  # the ledger, as for any source: nothing twice
    assert "fetched=0 delivered=0" in again.stderr
    results = [add, polled, again]
    if mode == "rotated":
        # A wrong password in the registry: the refusal is reported, and no form of it leaks.
        ok(popflow(config, "sources", "add", "customer-1", "--host", box.host, "--port", str(box.tls_port),
                   "--ca-file", str(box.ca_file), "--username", box.username, "--password-env", "X", "--replace",
                   key=key, X=PASSWORD + "-old"))
        refused = popflow(config, "poll", key=key)
        assert refused.returncode == 1 and "customer-1" in refused.stdout + refused.stderr
        results.append(refused)
    assert_no_password(results, state_url, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_registry_sources_on_celery_workers(tmp_path: Path, key: str, dovecot_server: DovecotServer) -> None:
    """A scheduler and a worker (Redis, PostgreSQL) poll registry sources, including one added while they run."""
    broker, queue = broker_url("redis"), queue_name()
    boxes = [dovecot_server.add_user(f"cel{os.urandom(3).hex()}", f"{PASSWORD}-{n}") for n in range(2)]
    for index, box in enumerate(boxes):
        for number in range(4):
            box.deliver(sample_message(index * 100 + number))
    procs: list[Proc] = []
    with pg_schema() as state:
        config = write_config(tmp_path, state, executor={"type": "celery", "broker": broker, "queue": queue,
                                                         "lease": "10s"})
        os.environ["POPFLOW_SECRET_KEY"] = key  # inherited by the scheduler and worker processes
        try:
            def add(name: str, box: DovecotServer) -> None:
                ok(popflow(config, "sources", "add", name, "--host", box.host, "--port", str(box.port), "--tls",
                           "none", "--allow-insecure", "--username", box.username, "--password-env", "X",
                           "--every", "1s", key=key, X=box.password))

            add("early", boxes[0])
            http = free_port()
            procs += [Proc.start("worker", config, "worker", "--concurrency", "2", "--http", str(http), verbose=True),
                      Proc.start("scheduler", config, "run", verbose=True)]
            wait_until(lambda: boxes[0].count() == 0, 60, what="the first registry source drained")
            add("late", boxes[1])  # picked up by the running scheduler and worker
            wait_until(lambda: boxes[1].count() == 0, 60, what="the source added later drained")
            # The worker's own /metrics: the polls it ran, by source (no scheduler in this process).
            wait_until(lambda: 'popflow_messages_total{outcome="delivered",source="late"} 4.0' in scrape(http),
                       30, what="the worker's metrics to count the late source's messages")
            metrics = scrape(http)
            health = urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=5)
            assert health.status == 200
            codes = {proc.name: proc.terminate() for proc in procs}
        finally:
            os.environ.pop("POPFLOW_SECRET_KEY", None)
            for proc in procs:
                if proc.process.poll() is None:
                    proc.kill_group()
            purge_queue(broker, queue)
    logs = {proc.name: proc.log() for proc in procs}
    assert 'popflow_messages_total{outcome="delivered",source="early"} 4.0' in metrics
    assert 'popflow_polls_total{source="early",status="ok"}' in metrics and "popflow_state_up 1.0" in metrics
    assert codes == {"worker": 0, "scheduler": 0}, {n: logs[n][-2000:] for n in codes}
    delivered = procs[0].polls()
    assert delivered == {"early": 4, "late": 4}, logs["worker"][-3000:]
    assert len(list((tmp_path / "out").glob("*/*"))) == 8
    for box in boxes:
        for form in forms(box.password):
            assert all(form not in text for text in logs.values()), form


def test_a_task_for_a_disabled_or_removed_source_polls_nothing(tmp_path: Path, key: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A poll task enqueued before `sources disable`/`remove` is dropped by the worker, not run."""
    from popflow.app import App
    from popflow.config import load_config
    from popflow.executors.task import PollTask
    from popflow.executors.ticks import TickBook

    state = f"sqlite:///{tmp_path / 'state.db'}"
    config = write_config(tmp_path, state, executor={"type": "celery", "broker": "memory://"})
    # Port 9 on loopback: a poll that did run would fail to connect and say so in its status.
    for name in ("off", "gone"):
        ok(popflow(config, "sources", "add", name, "--host", "127.0.0.1", "--port", "9", "--tls", "none",
                   "--allow-insecure", "--username", "u", "--password-env", "X", key=key, X=PASSWORD))
    monkeypatch.setenv("POPFLOW_SECRET_KEY", key)
    monkeypatch.setattr("popflow.executors.task.REFRESH_EVERY", 0.0)  # else the worker's copy is trusted for 10 s
    app = App(load_config(config))
    try:
        task = PollTask(app, app.config.executor)
        assert {"off", "gone"} <= set(app.source_configs)
        TickBook(app.state, "test", 60.0).claim([("off", 1000), ("gone", 1000)])
        ok(popflow(config, "sources", "disable", "off", key=None))
        ok(popflow(config, "sources", "remove", "gone", key=None))
        assert task.run("off", 1000) == "gone"
        assert task.run("gone", 1000) == "gone"
        assert "gone" not in app.source_configs and not app.source_configs["off"][1].enabled
    finally:
        app.close()
    engine = create_engine(state)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM popflow_runs")).scalar() == 0  # nothing polled
    engine.dispose()


def test_reprs_show_neither_keys_nor_tokens(tmp_path: Path, key: str) -> None:
    from popflow.source_registry import RegistryKeys, SourceRegistry
    from popflow.state import StateStore

    keys = RegistryKeys([key.encode()], "test")
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        book = SourceRegistry(state)
        book.add({"box": {"host": "h", "username": "u", "password": PASSWORD}}, keys)
        (entry,) = book.entries()
        token = str(entry.stored_secrets).split(":", 1)[1]
        assert book.load(keys)["box"]["password"] == PASSWORD
    finally:
        state.close()
    for text_ in (repr(keys), str(keys), repr(entry), str(entry.shown())):
        assert key not in text_ and token not in text_
        assert all(form not in text_ for form in forms(PASSWORD))
    assert entry.secret_keys == ["password"] and "password" not in entry.options
