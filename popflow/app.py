"""An assembled popflow: config, plugins, state, sources and sinks — what every command starts from."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from popflow.config import Config, validate_component
from popflow.context import RuntimeContext
from popflow.delivery import Deliverer, SinkRunner
from popflow.errors import ConfigError, StorageError
from popflow.holding import Holding
from popflow.locks import Lease, LockBusy
from popflow.logs import log_fields
from popflow.pipeline import Pipeline
from popflow.plugins import PopflowPluginManager, make_plugin_manager
from popflow.poller import Poller, PollReport, ProgressCallback
from popflow.private import mkdirs_private
from popflow.raw_copies import StateRawStore
from popflow.raw_store import MessageStore
from popflow.redact import option_secrets, register_secrets, url_secrets
from popflow.sinks.base import Sink
from popflow.source_registry import REGISTRY_FILE, RegistryKeys, SourceRegistry, load_keys
from popflow.sources.base import Source
from popflow.spool import clean_spool
from popflow.state import StateStore

log = logging.getLogger(__name__)


def register_config_secrets(config: Config) -> None:
    """Feed the log redaction (:mod:`popflow.redact`) with every secret the config holds: secret
    keys, URL credentials (the state URL's, a webhook's), and ``${VAR}`` values in secret keys."""
    found = url_secrets(config.state) + url_secrets(config.executor.broker or "") + config.env_secrets()
    for entries in (config.sources, config.sinks, config.plugins):
        for options in entries.values():  # not the names: a sink may be called "token"
            found += option_secrets(options)
    register_secrets(found)


def resolve_sqlite_url(url: str, base_dir: Path) -> str:
    """Make a relative SQLite path in a URL relative to the config file's folder."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"not a database URL: {exc}", path="state") from None
    database = parsed.database
    if parsed.get_backend_name() == "sqlite" and database and database != ":memory:" \
            and not Path(database).is_absolute():
        return parsed.set(database=str(base_dir / database)).render_as_string(hide_password=False)
    return url


class App:
    """Config + plugin manager + state store; builds sources, sinks and pollers on demand."""

    def __init__(self, config: Config, *, plugins_dirs: Iterable[Path] = (), extra_plugins: Iterable[object] = (),
                 pm: PopflowPluginManager | None = None, registry: bool = True) -> None:
        self.config = config
        self.with_registry = registry
        """Merge the source registry's sources (:meth:`refresh_sources`) when the state store opens."""
        self._registry_lock = threading.RLock()
        self._registry_names: set[str] = set()
        self._registry_seen: tuple[int, Any] | None = None
        self._registry_checked = 0.0
        self.file = str(config.source_file) if config.source_file else None
        base_dir = config.source_file.parent if config.source_file else Path.cwd()
        dirs = [config.resolve_path(path) for path in config.plugins_dir] + [Path(p) for p in plugins_dirs]
        self.pm = pm or make_plugin_manager(plugins_dirs=dirs, extra_plugins=extra_plugins)
        self.context = RuntimeContext(data_dir=config.resolve_path(config.data_dir), base_dir=base_dir)
        register_config_secrets(config)
        self.source_configs = self._validate("sources", config.sources, self.pm.registry.source_type, "pop3")
        self.sink_configs = self._validate("sinks", config.sinks, self.pm.registry.sink_type, None)
        self._state: StateStore | None = None
        self.poll_observers: list[Callable[[PollReport], None]] = []
        """Called with the report of every poll that ran (metrics: :mod:`popflow.ops.metrics`)."""
        self.store: MessageStore
        if config.executor.type == "celery":  # workers on many machines: raw copies in the shared state DB
            self.store = StateRawStore(lambda: self.state)
        else:
            self.store = MessageStore(self.context.data_dir / "messages")
        # Validated models may hold secrets the raw tree did not name (a plugin type's SecretStr).
        register_secrets(secret for _, options in [*self.source_configs.values(), *self.sink_configs.values()]
                         for secret in option_secrets(options))
        self.pm.hook.popflow_startup(config=config)

    def _validate(self, kind: str, entries: dict[str, dict[str, Any]], lookup: Any,
                  default_type: str | None, file: str | None = None) -> dict[str, tuple[type, Any]]:
        file = file or self.file
        validated = {}
        for name, options in entries.items():
            type_name = options.get("type", default_type)
            if type_name is None:
                raise ConfigError("missing 'type'", file=file, path=f"{kind}.{name}")
            try:
                cls = lookup(type_name)
            except ConfigError as exc:
                raise ConfigError(exc.problem, file=file, path=f"{kind}.{name}.type") from None
            validated[name] = (cls, validate_component(cls.config_model, options, kind=kind, name=name, file=file))
        return validated

    def validate_sources(self, entries: dict[str, dict[str, Any]]) -> dict[str, tuple[type, Any]]:
        """Validate registry sources as YAML ones are; a name the YAML file also defines is an error."""
        clash = sorted(set(entries) & set(self.config.sources))
        if clash:
            raise ConfigError(f"source {clash[0]!r} is defined both in this file and in the source registry; "
                              f"remove one (the YAML entry, or `popflow sources remove {clash[0]}`)",
                              file=self.file, path=f"sources.{clash[0]}")
        register_secrets(option_secrets(entries))
        validated = self._validate("sources", entries, self.pm.registry.source_type, "pop3", file=REGISTRY_FILE)
        register_secrets(secret for _, options in validated.values() for secret in option_secrets(options))
        return validated

    def registry_keys(self) -> RegistryKeys | None:
        """The source registry's key(s): ``POPFLOW_SECRET_KEY``, else the config's ``secret_key_file``."""
        key_file = self.config.secret_key_file
        return load_keys(self.config.resolve_path(key_file) if key_file is not None else None)

    def refresh_sources(self, max_age: float = 0.0) -> list[str]:
        """Merge the source registry into :attr:`source_configs` (when it changed); the enabled names.

        One cheap query (row count, newest change) decides whether anything changed; with
        ``max_age``, not even that when the last look is more recent. A worker calls this before
        each poll (``max_age`` 10 s), so a password changed with ``popflow sources add --replace``
        applies within seconds.
        """
        if self._state is None:
            _ = self.state  # opening it refreshes (and this returns below)
            return self.enabled_sources()
        with self._registry_lock:
            if max_age and time.monotonic() - self._registry_checked < max_age:
                return self.enabled_sources()
            book = SourceRegistry(self._state)
            seen = book.snapshot()
            if seen != self._registry_seen:
                validated = self.validate_sources(book.load(self.registry_keys()))
                merged = {name: entry for name, entry in self.source_configs.items()
                          if name not in self._registry_names}
                merged.update(validated)
                self.source_configs = merged  # one swap: poll threads see the old or the new mapping
                self._registry_names = set(validated)
                self._registry_seen = seen
            self._registry_checked = time.monotonic()
        return self.enabled_sources()

    @property
    def state(self) -> StateStore:
        """The state store, opened on first use."""
        if self._state is None:
            url = resolve_sqlite_url(self.config.state, self.context.base_dir)
            self._state = StateStore(url)
            if self.with_registry:
                self.refresh_sources()
        return self._state

    def prepare_data_dir(self) -> None:
        """Create ``data_dir`` and clean what a crashed process left (spool files, partial writes).

        Another popflow process may share ``data_dir`` (a manual ``popflow poll`` beside the
        ``popflow run`` service): only what belongs to processes that no longer run is removed.
        """
        try:
            mkdirs_private(self.context.data_dir)  # spool, dead letters, quarantine: private (0700)
        except OSError as exc:
            raise StorageError(f"cannot create data_dir {self.context.data_dir}: {exc.strerror or exc}") from exc
        removed = clean_spool(self.context.spool_root) + self.store.clean_partial()
        if removed:
            log.info("removed %d leftover spool/partial file(s) from an earlier run", removed)

    # -- building blocks ------------------------------------------------------------------------
    def source(self, name: str) -> Source:
        """A new instance of the named source."""
        if name not in self.source_configs:
            known = ", ".join(sorted(self.source_configs)) or "none"
            raise ConfigError(f"no source named {name!r} (known: {known})")
        cls, options = self.source_configs[name]
        source: Source = cls(name, options, self.context)
        return source

    def sink(self, name: str) -> Sink:
        """A new, unopened instance of the named sink."""
        cls, options = self.sink_configs[name]
        sink: Sink = cls(name, options, self.context)
        return sink

    def holding(self) -> Holding:
        """Dead letters and the quarantine: raw bytes in this app's message store, entries in its state."""
        return Holding(self.state, self.store)

    def pipeline(self) -> Pipeline:
        """The pre-delivery stages, wired to this app's plugins, holding and sink names."""
        return Pipeline(self.pm, self.holding(), set(self.sink_configs))

    def deliverer(self) -> Deliverer:
        """A deliverer with fresh sink instances (each poll or replay owns its own, so sources run in
        parallel); close it (:meth:`Deliverer.close`) to close the sinks."""
        runners = {name: SinkRunner(name, self.sink(name), options) for name, (_, options) in self.sink_configs.items()}
        return Deliverer(runners, self.holding(), self.pm, self.state, self.context.stop)

    def poller(self, name: str) -> Poller:
        """A poller for one poll of the named source."""
        source = self.source(name)  # a config error for an unknown name before any sink is made
        return Poller(source, self.pipeline(), self.deliverer(), self.state, self.config.batch_size)

    def poll(self, name: str, progress: ProgressCallback | None = None, *,
             lease_seconds: float | None = None) -> PollReport:
        """Poll one source once, holding its lease (:mod:`popflow.locks`) for the whole poll.

        When another popflow process is polling the source, nothing is polled: the report says who
        (and ``report.busy`` is set). ``lease_seconds`` overrides the lease length (``executor.lease``).
        Every line logged meanwhile carries ``source`` (JSON logs, :func:`popflow.logs.log_fields`).
        """
        with log_fields(source=name):
            return self._poll(name, progress, lease_seconds)

    def _poll(self, name: str, progress: ProgressCallback | None, lease_seconds: float | None) -> PollReport:
        poller = self.poller(name)  # a config error for an unknown name before any lease is taken
        lease = Lease(self.state, name) if lease_seconds is None else \
            Lease(self.state, name, lease=lease_seconds, renew_every=lease_seconds / 3)
        try:
            lease.acquire()
        except LockBusy as busy:
            report = PollReport(name)
            report.error = (f"source {name!r} is being polled by another popflow process "
                            f"({busy.holder.describe() if busy.holder else 'owner unknown'})")
            report.counts.errors = 1
            report.busy = True
            log.info(report.line())
            return report
        try:
            report = poller.poll(progress)
        finally:
            lease.release()
        if lease.lost.is_set() and report.error is None:
            report.error = f"the lease on source {name!r} was taken over by another process during the poll"
        log.info(report.line())
        for observer in self.poll_observers:
            try:
                observer(report)
            except Exception:  # an observer must never break polling
                log.exception("poll observer %r failed", observer)
        return report

    def enabled_sources(self) -> list[str]:
        """Names of the sources that are not disabled."""
        return [name for name, (_, options) in self.source_configs.items() if options.enabled]

    def close(self) -> None:
        """Tell plugins we stop; release the state store."""
        try:
            self.pm.hook.popflow_shutdown()
        finally:
            if self._state is not None:
                self._state.close()
