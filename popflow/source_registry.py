"""The source registry: sources kept in the state database (``popflow sources ...``), not in YAML.

A service with thousands of customer mailboxes adds them with ``popflow sources add`` or
``popflow sources import`` instead of editing a YAML file per customer. Registry sources are polled
exactly like YAML ones: :meth:`popflow.app.App.refresh_sources` merges them into
``App.source_configs``, validated through the same pydantic model as a YAML entry; a name in both
is a config error.

Rows of ``popflow_sources`` (migration ``s0003``) hold the options without their secret keys
(``options``) and a Fernet token of the secret ones (``secrets``). The token is stored as
``KEYID:TOKEN``, ``KEYID`` being the first 12 hex digits of the SHA-256 of the key that encrypted
it, so a wrong key is reported as such (which key the row needs, which ones were given) instead of
as a corrupt token. The key is the operator's: ``POPFLOW_SECRET_KEY`` (one or more Fernet keys,
comma-separated) or the file the config's ``secret_key_file`` names (one key per line). The first
key encrypts; every key decrypts, so a key is rotated by putting the new one first and running
``popflow sources rekey``. See docs/scale-out.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from popflow.errors import ConfigError
from popflow.redact import MASK, SECRET_KEYS
from popflow.shared_tables import registry
from popflow.state import StateStore
from popflow.timestamps import now

KEY_ENV = "POPFLOW_SECRET_KEY"
"""Environment variable holding the registry key(s): Fernet keys, comma-separated, first encrypts."""

REGISTRY_FILE = "(source registry)"
"""What config errors about a registry source name as their file."""


def is_secret_key(key: str) -> bool:
    """Option keys stored encrypted (and never shown): the same set the log redaction masks."""
    return key.lower() in SECRET_KEYS


def key_id(key: bytes) -> str:
    """A short, non-secret fingerprint of a Fernet key (it names the key in messages and rows)."""
    return hashlib.sha256(key.strip()).hexdigest()[:12]


def generate_key() -> str:
    """A new random Fernet key (url-safe base64 of 32 bytes)."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode("ascii")


class RegistryKeys:
    """The operator's Fernet key(s): the first encrypts, each decrypts the rows it encrypted."""

    def __init__(self, keys: list[bytes], origin: str) -> None:
        from cryptography.fernet import Fernet

        if not keys:
            raise ConfigError(f"{origin} holds no key; create one with `popflow sources keygen FILE`")
        self.origin = origin
        self._fernets: dict[str, Fernet] = {}
        for index, key in enumerate(keys):
            try:
                fernet = Fernet(key.strip())
            except (ValueError, TypeError):
                raise ConfigError(f"key {index + 1} in {origin} is not a Fernet key (32 url-safe base64-encoded "
                                  "bytes); create one with `popflow sources keygen FILE`") from None
            self._fernets.setdefault(key_id(key), fernet)
        self.current = key_id(keys[0])

    def __repr__(self) -> str:  # never the keys themselves
        return f"RegistryKeys(origin={self.origin!r}, ids={list(self._fernets)})"

    def encrypt(self, secrets: dict[str, Any]) -> str:
        """``KEYID:TOKEN`` of the secret options, encrypted with the first key."""
        token = self._fernets[self.current].encrypt(json.dumps(secrets, sort_keys=True).encode("utf-8"))
        return f"{self.current}:{token.decode('ascii')}"

    def decrypt(self, name: str, stored: str) -> dict[str, Any]:
        """The secret options of source ``name``; a :class:`ConfigError` saying why when it cannot be."""
        from cryptography.fernet import InvalidToken

        wanted, _, token = stored.partition(":")
        fernet = self._fernets.get(wanted)
        if fernet is None:
            raise ConfigError(
                f"cannot decrypt the secrets of registry source {name!r}: they were encrypted with key "
                f"{wanted}, and {self.origin} holds key(s) {', '.join(self._fernets)} — wrong key "
                f"(set {KEY_ENV} or secret_key_file to the key the registry was written with)")
        try:
            value = json.loads(fernet.decrypt(token.encode("ascii")))
        except (InvalidToken, ValueError):
            raise ConfigError(f"cannot decrypt the secrets of registry source {name!r} with key {wanted}: "
                              "the stored token is damaged (add the source again)") from None
        if not isinstance(value, dict):
            raise ConfigError(f"the secrets of registry source {name!r} are not a mapping (add it again)")
        return value

    def needs_rotation(self, stored: str) -> bool:
        """True when a row was encrypted with another key than the current (first) one."""
        return stored.partition(":")[0] != self.current


def load_keys(key_file: Path | None) -> RegistryKeys | None:
    """The key(s) from ``POPFLOW_SECRET_KEY``, else from ``key_file``; None when neither is given."""
    value = os.environ.get(KEY_ENV)
    if value is not None:
        return RegistryKeys([part.encode("ascii", "replace") for part in value.split(",") if part.strip()], KEY_ENV)
    if key_file is None:
        return None
    try:
        text = key_file.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the registry key file {key_file}: {getattr(exc, 'strerror', None) or exc}",
                          path="secret_key_file") from None
    lines = [line.strip().encode("ascii") for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return RegistryKeys(lines, f"secret_key_file {key_file}")


def split_secrets(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(plain options, secret options) of one source's options."""
    plain = {key: value for key, value in options.items() if not is_secret_key(key)}
    secret = {key: value for key, value in options.items() if is_secret_key(key)}
    return plain, secret


@dataclass
class RegistryEntry:
    """One row of the registry: its options without secrets, which secret keys it has, whether it is enabled."""

    name: str
    type: str
    options: dict[str, Any]
    enabled: bool
    secret_keys: list[str] = field(default_factory=list)
    key_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    stored_secrets: str | None = field(default=None, repr=False)

    def shown(self) -> dict[str, Any]:
        """The options as ``show`` prints them: every secret key masked, never its value."""
        out = {"type": self.type, **self.options}
        out.update({key: f"{MASK} (encrypted, key {self.key_id})" for key in self.secret_keys})
        out["enabled"] = self.enabled
        return out


class SourceRegistry:
    """Reads and writes ``popflow_sources``; decrypts only through :meth:`load` (with the key)."""

    def __init__(self, state: StateStore) -> None:
        self.state = state

    def snapshot(self) -> tuple[int, datetime | None]:
        """(row count, newest update): a cheap test of whether the registry changed since the last look."""
        with self.state.engine.connect() as connection:
            count, newest = connection.execute(select(func.count(), func.max(registry.c.updated_at))).one()
        return int(count or 0), newest

    def entries(self, names: Iterable[str] | None = None) -> list[RegistryEntry]:
        """The rows (all, or the named ones), secrets still encrypted, by name."""
        query = select(registry).order_by(registry.c.name)
        if names is not None:
            query = query.where(registry.c.name.in_(list(names)))
        with self.state.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [self._entry(row) for row in rows]

    @staticmethod
    def _entry(row: Any) -> RegistryEntry:
        stored = row["secrets"]
        secret_keys = list(row["options"].get("__secret_keys__", [])) if stored else []
        options = {k: v for k, v in row["options"].items() if k != "__secret_keys__"}
        return RegistryEntry(name=row["name"], type=row["type"], options=options, enabled=bool(row["enabled"]),
                             secret_keys=secret_keys, key_id=stored.partition(":")[0] if stored else None,
                             created_at=row["created_at"], updated_at=row["updated_at"], stored_secrets=stored)

    def load(self, keys: RegistryKeys | None) -> dict[str, dict[str, Any]]:
        """Every source's full options (secrets decrypted, ``enabled`` from the row), as a YAML entry holds them."""
        loaded: dict[str, dict[str, Any]] = {}
        for entry in self.entries():
            options: dict[str, Any] = {"type": entry.type, **entry.options, "enabled": entry.enabled}
            if entry.stored_secrets:
                if keys is None:
                    raise ConfigError(f"registry source {entry.name!r} has encrypted secrets and no key is given: "
                                      f"set {KEY_ENV} or the config's secret_key_file", path="secret_key_file")
                try:
                    options.update(keys.decrypt(entry.name, entry.stored_secrets))
                except ConfigError as exc:
                    raise ConfigError(exc.problem, file=REGISTRY_FILE) from None
            loaded[entry.name] = options
        return loaded

    def _row(self, name: str, options: dict[str, Any], keys: RegistryKeys | None) -> dict[str, Any]:
        options = dict(options)
        enabled = bool(options.pop("enabled", True))
        type_name = str(options.pop("type", "pop3"))
        plain, secret = split_secrets(options)
        stored = None
        if secret:
            if keys is None:
                raise ConfigError(f"source {name!r} has a secret ({', '.join(sorted(secret))}) and no key is given to "
                                  f"encrypt it: set {KEY_ENV} or the config's secret_key_file "
                                  "(create a key with `popflow sources keygen FILE`)")
            stored = keys.encrypt(secret)
            plain["__secret_keys__"] = sorted(secret)
        return {"name": name, "type": type_name, "options": plain, "secrets": stored, "enabled": enabled}

    def add(self, sources: dict[str, dict[str, Any]], keys: RegistryKeys | None, *, replace: bool = False) -> None:
        """Insert (or with ``replace``, overwrite) sources in one transaction; a name already there is an error."""
        rows = [self._row(name, options, keys) for name, options in sources.items()]
        stamp = now()
        with self.state.transaction() as connection:
            have = set(connection.execute(select(registry.c.name).where(
                registry.c.name.in_(list(sources)))).scalars()) if sources else set()
            if have and not replace:
                shown = ", ".join(sorted(have)[:10]) + (" ..." if len(have) > 10 else "")
                raise ConfigError(f"the registry already has source(s) {shown}; pass --replace to overwrite")
            for row in rows:
                if row["name"] in have:
                    connection.execute(update(registry).where(registry.c.name == row["name"])
                                       .values(**{k: v for k, v in row.items() if k != "name"}, updated_at=stamp))
                else:
                    connection.execute(insert(registry).values(**row, created_at=stamp, updated_at=stamp))

    def remove(self, names: Iterable[str]) -> list[str]:
        """Delete the named sources; returns the names that were not there."""
        wanted = list(names)
        with self.state.transaction() as connection:
            have = set(connection.execute(select(registry.c.name).where(registry.c.name.in_(wanted))).scalars())
            connection.execute(delete(registry).where(registry.c.name.in_(wanted)))
        return [name for name in wanted if name not in have]

    def set_enabled(self, names: Iterable[str], enabled: bool) -> list[str]:
        """Enable or disable the named sources; returns the names that were not there."""
        wanted = list(names)
        with self.state.transaction() as connection:
            have = set(connection.execute(select(registry.c.name).where(registry.c.name.in_(wanted))).scalars())
            connection.execute(update(registry).where(registry.c.name.in_(wanted))
                               .values(enabled=enabled, updated_at=now()))
        return [name for name in wanted if name not in have]

    def rekey(self, keys: RegistryKeys) -> int:
        """Re-encrypt every row not encrypted with the current key; returns how many changed."""
        changed = 0
        for entry in self.entries():
            if entry.stored_secrets and keys.needs_rotation(entry.stored_secrets):
                secret = keys.decrypt(entry.name, entry.stored_secrets)
                with self.state.transaction() as connection:
                    connection.execute(update(registry).where(registry.c.name == entry.name)
                                       .values(secrets=keys.encrypt(secret), updated_at=now()))
                changed += 1
        return changed
