"""The configuration file: pydantic models for the contract's keys, ``${VAR}`` expansion, loading.

This module only validates. Opening connections and reading secrets from files happen in the
sources and sinks. Source and sink *types* come from plugins, so their options are validated in
two steps: :class:`Config` checks the common keys here, and :func:`validate_component` checks each
entry against the model of the registered type (see :mod:`popflow.registry`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

# The rule models live in config_rules; re-exported so ``from popflow.config import RouteRule`` works.
from popflow.config_rules import FilterRule as FilterRule
from popflow.config_rules import MatchRule as MatchRule
from popflow.config_rules import RouteRule as RouteRule
from popflow.config_rules import StrictModel as StrictModel
from popflow.durations import Duration, Interval, Size, at_least, parse_duration
from popflow.errors import ConfigError

DEFAULT_CONFIG_NAME = "popflow.yaml"
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


class SourceSettings(BaseModel):
    """Keys every source type shares: its type and its schedule.

    Source types extend this model with their own keys (see :class:`popflow.sources.pop3.Pop3Config`).
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)

    type: str = "pop3"
    every: Interval | None = None
    cron: str | None = None
    enabled: bool = True
    keep_on_server: bool = False
    delete_after: Duration | None = None
    max_messages: int = Field(default=0, ge=0)
    max_size: Size = 50 * 1024 * 1024

    @model_validator(mode="after")
    def _one_schedule(self) -> SourceSettings:
        if self.every is not None and self.cron is not None:
            raise ValueError("give either 'every' or 'cron', not both")
        if self.cron is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(self.cron)
            except ValueError as exc:
                raise ValueError(f"invalid cron expression {self.cron!r}: {exc}") from exc
        if self.delete_after is not None and not self.keep_on_server:
            raise ValueError("'delete_after' only applies with 'keep_on_server: true'")
        return self

    @property
    def interval(self) -> float:
        """Seconds between polls when no cron is given (default 60s)."""
        return self.every if self.every is not None else 60.0


class SinkSettings(BaseModel):
    """Keys every sink type shares: its type, ``retries`` and ``backoff``."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    type: str
    retries: int = Field(default=3, ge=0, le=100)
    backoff: Duration = 1.0
    backoff_max: Duration = 60.0


class HttpSettings(StrictModel):
    """``http:``: the metrics, health and status server of ``popflow run`` (see :mod:`popflow.ops.server`)."""

    listen: str = "127.0.0.1:9464"

    @field_validator("listen", mode="before")
    @classmethod
    def _host_port(cls, value: Any) -> str:
        from popflow.ops.listen import parse_listen

        return str(parse_listen(value))  # a bare port means loopback


class ExecutorSettings(StrictModel):
    """``executor:``: where polls run — in ``popflow run``'s threads (``local``) or on Celery workers.

    See docs/scale-out.md. ``broker`` is required for ``celery``; ``lease`` is how long a worker
    holds a mailbox without renewing (a worker that dies loses it after that long).
    """

    type: Literal["local", "celery"] = "local"
    broker: str | None = None
    queue: str = Field(default="popflow", min_length=1, max_length=190)
    lease: Annotated[float, BeforeValidator(parse_duration), AfterValidator(at_least(5.0))] = 300.0

    @model_validator(mode="after")
    def _broker_for_celery(self) -> ExecutorSettings:
        if self.type == "celery" and not self.broker:
            raise ValueError("executor type 'celery' needs 'broker' (redis://... or amqp://...)")
        if self.broker and not re.match(r"^(redis|rediss|amqp|amqps|pyamqp|memory)://", self.broker):
            raise ValueError("'broker' must be a redis://, rediss://, amqp:// or amqps:// URL")
        return self

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        from popflow.redact import display_url

        for key, value in super().__repr_args__():
            yield key, (display_url(value) if key == "broker" and isinstance(value, str) else value)


class Config(StrictModel):
    """The whole configuration file."""

    state: str = "sqlite:///popflow-state.db"
    data_dir: Path = Path("./popflow-data")
    plugins_dir: list[Path] = Field(default_factory=list)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    batch_size: int = Field(default=100, ge=1, le=10000)
    log_format: Literal["text", "json"] = "text"
    http: HttpSettings | None = None
    sources: dict[str, dict[str, Any]] = Field(default_factory=dict)
    plugins: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    filters: list[FilterRule] = Field(default_factory=list)
    routes: list[RouteRule] = Field(default_factory=list)
    sinks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)
    secret_key_file: Path | None = None
    """The source registry's Fernet key(s), one a line (``POPFLOW_SECRET_KEY`` overrides; docs/scale-out.md)."""

    # Where the file was read from; relative paths in it are relative to this folder.
    source_file: Path | None = Field(default=None, exclude=True)
    # (key path, value) of every ``${VAR}`` substitution: a value put into a secret-bearing key
    # (a password, a URL, a token command) is a secret even where the key's type is a plain str.
    _env_values: list[tuple[str, str]] = PrivateAttr(default_factory=list)

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # repr() and str() reach logs (POPFLOW_TRACE_PLUGINS prints the config handed to
        # popflow_startup): secret keys are masked and URLs shown without their credentials.
        from popflow.redact import display_url, redact_options

        for key, value in super().__repr_args__():
            if key in ("sources", "sinks", "plugins") and isinstance(value, dict):
                value = {name: redact_options(options) for name, options in value.items()}
            elif key == "state" and isinstance(value, str):
                value = display_url(value)
            yield key, value

    def env_secrets(self) -> list[str]:
        """Values ``${VAR}`` put into secret-bearing keys (see :func:`popflow.redact.is_secret_path`)."""
        from popflow.redact import is_secret_path

        return [value for path, value in self._env_values if is_secret_path(path)]

    @field_validator("state")
    @classmethod
    def _database_url(cls, value: str) -> str:
        # Checked here so a typo is a config error naming `state`, not a traceback at first use.
        # The value is not repeated: it may hold a password.
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a database URL; use SQLAlchemy's form, e.g. sqlite:///popflow-state.db "
                             "or postgresql+psycopg://user:password@host/db") from None
        try:
            url.get_dialect()
        except NoSuchModuleError:
            raise ValueError(f"unknown database type {url.drivername!r} (sqlite, postgresql, mysql, ...)") from None
        return value

    @field_validator("plugins_dir", mode="before")
    @classmethod
    def _one_or_many_dirs(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | Path) else value

    @field_validator("sources", "sinks", mode="before")
    @classmethod
    def _mapping_of_mappings(cls, value: Any) -> Any:
        if value is None:
            return {}
        if isinstance(value, dict):
            for name, body in value.items():
                if not isinstance(body, dict):
                    raise ValueError(f"{name!r} must be a mapping of options")
        return value

    @model_validator(mode="after")
    def _routes_name_known_sinks(self) -> Config:
        for index, route in enumerate(self.routes):
            for sink in route.sinks:
                if sink not in self.sinks:
                    known = ", ".join(sorted(self.sinks)) or "none defined"
                    raise ValueError(f"routes[{index}] names unknown sink {sink!r} (known: {known})")
        return self

    def resolve_path(self, path: Path | str) -> Path:
        """A path from the config, relative to the config file's folder."""
        path = Path(path).expanduser()
        if path.is_absolute() or self.source_file is None:
            return path
        return self.source_file.parent / path

    def plugin_options(self, name: str) -> dict[str, Any] | None:
        """Options for plugin ``name``, or None when the config does not enable it."""
        if name not in self.plugins:
            return None
        return self.plugins[name] or {}


def expand_env(value: Any, path: str = "", found: list[tuple[str, str]] | None = None) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string of a loaded YAML tree.

    ``found``, when given, collects ``(key path, substituted value)`` for every substitution.
    """
    if isinstance(value, dict):
        return {key: expand_env(item, f"{path}.{key}" if path else str(key), found) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_env(item, f"{path}[{index}]", found) for index, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            if found is not None:
                found.append((path, os.environ[name]))
            return os.environ[name]
        if default is not None:
            if found is not None:
                found.append((path, default))
            return default
        raise ConfigError(f"environment variable {name} is not set (use ${{{name}:-default}})", path=path)

    return _ENV_RE.sub(substitute, value)


def format_validation_error(error: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """(key path, readable problem) pairs from a pydantic error."""
    problems = []
    for item in error.errors():
        parts = [prefix] if prefix else []
        for loc in item["loc"]:
            if isinstance(loc, int):
                parts[-1:] = [f"{parts[-1]}[{loc}]"] if parts else [f"[{loc}]"]
            else:
                parts.append(str(loc))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append((".".join(parts) or "(top level)", message))
    return problems


def config_error_from(error: ValidationError, file: str | None, prefix: str = "") -> ConfigError:
    """One :class:`ConfigError` describing every problem of a pydantic error."""
    problems = format_validation_error(error, prefix)
    path, problem = problems[0]
    if len(problems) > 1:
        problem += "".join(f"\n  {p}: {m}" for p, m in problems[1:])
    return ConfigError(problem, file=file, path=path)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error.

    Plain YAML keeps the last value silently, so a second ``sources:`` block, or two sources with
    one name, would drop configuration without a word. Merge keys (``<<: *base``) may still be
    overridden: only keys written in the mapping itself are compared.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key {key!r} (first given on line {first.start_mark.line + 1})",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse config YAML (safe types only; duplicate keys are an error)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe types only


def default_config_path() -> Path:
    """``$POPFLOW_CONFIG``, else ``./popflow.yaml``."""
    return Path(os.environ.get("POPFLOW_CONFIG") or DEFAULT_CONFIG_NAME)


def parse_config(data: Any, file: str | None = None) -> Config:
    """Validate an already-loaded YAML tree."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the file must hold a mapping of keys (state, sources, sinks, ...)", file=file)
    substitutions: list[tuple[str, str]] = []
    try:
        expanded = expand_env(data, found=substitutions)
    except ConfigError as exc:
        exc.file = file
        raise ConfigError(exc.problem, file=file, path=exc.path) from None
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        raise config_error_from(exc, file) from None
    config._env_values = substitutions
    return config


def load_config(path: Path | str | None = None) -> Config:
    """Read, expand and validate a config file; every problem is a :class:`ConfigError`."""
    config_path = Path(path) if path is not None else default_config_path()
    shown = str(config_path)
    if not config_path.exists():
        raise ConfigError(
            "no such config file; create a starter one with `popflow init` "
            "(or pass -c FILE / set POPFLOW_CONFIG)",
            file=shown,
        )
    try:
        data = load_yaml(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"not valid YAML: {problem}", file=shown, path=where) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=shown) from None
    config = parse_config(data, shown)
    config.source_file = config_path.resolve()
    return config


def validate_component(
    model: type[BaseModel], options: dict[str, Any], *, kind: str, name: str, file: str | None
) -> Any:
    """Validate one source's or sink's options against its type's model."""
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        raise config_error_from(exc, file, prefix=f"{kind}.{name}") from None


def secret_value(secret: SecretStr | None) -> str | None:
    """The plain value of an optional secret (call only where the secret is used)."""
    return secret.get_secret_value() if secret is not None else None
