"""The built-in ``pop3`` source type: its options and the plugin hook that registers it.

The session itself (connect, login, list, retrieve, delete, QUIT) lives in
:mod:`popflow.sources.pop3_session`; the socket protocol in :mod:`popflow.sources.pop3_wire`; the
login mechanisms in :mod:`popflow.sources.pop3_auth`; TLS in :mod:`popflow.sources.tls`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from popflow.config import SourceSettings, secret_value
from popflow.durations import Timeout
from popflow.errors import AuthenticationError
from popflow.sources.base import Source
from popflow.sources.pop3_auth import run_token_command
from popflow.sources.pop3_session import Pop3Session

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"implicit": 995, "starttls": 110, "none": 110}


class Pop3Config(SourceSettings):
    """Options of a ``type: pop3`` source (see docs/authentication.md for TLS and auth)."""

    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    """Default: 995 for ``tls: implicit``, else 110."""
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    ca_file: Path | None = None
    """An extra CA bundle, trusted in addition to the system's."""
    tls_verify: bool = True
    """``false`` disables certificate checks (a warning is logged on every connect)."""
    allow_insecure: bool = False
    """Required for ``tls: none``: the session (and possibly the password) travels unencrypted."""
    username: str = Field(min_length=1)
    password: SecretStr | None = None
    password_file: Path | None = None
    """A file holding the password (read at connect time; a trailing newline is ignored)."""
    auth: Literal["auto", "user", "apop", "plain", "xoauth2"] = "auto"
    oauth2_token_command: str | list[str] | None = None
    """XOAUTH2: a command printing a fresh access token (a string runs via ``/bin/sh -c``)."""
    oauth2_token_file: Path | None = None
    """XOAUTH2: a file holding the access token (kept fresh by something else)."""
    timeout: Timeout = 30.0
    pipelining: bool = True
    """Pipeline RETR/DELE (RFC 2449) when the server advertises PIPELINING."""
    pipeline_window: int = Field(default=256, ge=1, le=10000)
    """At most this many commands in flight when pipelining (RETRs also stop at 8 MB of listed size).

    Wide enough that a batch of RETRs or DELEs costs about one round trip on a real network; a few
    KB of commands, which every socket buffer holds."""

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # The token command may carry an expanded ${CLIENT_SECRET}: repr() never shows it.
        for key, value in super().__repr_args__():
            yield key, ("***" if key == "oauth2_token_command" and value is not None else value)

    @field_validator("password")
    @classmethod
    def _non_empty_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("the password is empty (is its environment variable set?)")
        return value

    @field_validator("oauth2_token_command")
    @classmethod
    def _non_empty_command(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is not None and not (value.strip() if isinstance(value, str) else value):
            raise ValueError("the command is empty")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Pop3Config:
        if self.port is None:
            self.port = DEFAULT_PORTS[self.tls]
        if self.tls == "none" and not self.allow_insecure:
            raise ValueError("tls: none sends mail (and maybe the password) unencrypted; "
                             "set allow_insecure: true to allow it, or use tls: implicit or starttls")
        passwords = [k for k in ("password", "password_file") if getattr(self, k) is not None]
        tokens = [k for k in ("oauth2_token_command", "oauth2_token_file") if getattr(self, k) is not None]
        if len(passwords) > 1:
            raise ValueError("give either 'password' or 'password_file', not both")
        if len(tokens) > 1:
            raise ValueError("give either 'oauth2_token_command' or 'oauth2_token_file', not both")
        if self.auth == "xoauth2" or (self.auth == "auto" and tokens):
            if not tokens:
                raise ValueError("auth: xoauth2 needs 'oauth2_token_command' or 'oauth2_token_file'")
            if passwords:
                raise ValueError(f"'{passwords[0]}' is not used with XOAUTH2; remove it")
        else:
            if tokens:
                raise ValueError(f"'{tokens[0]}' is only used with auth: xoauth2 (or auto)")
            if not passwords:
                raise ValueError(f"auth: {self.auth} needs 'password' or 'password_file'")
        return self

    @property
    def server_port(self) -> int:
        """The port to connect to (the default filled in)."""
        return self.port or DEFAULT_PORTS[self.tls]

    @property
    def uses_token(self) -> bool:
        """True when the login uses an OAuth2 token rather than a password."""
        return self.oauth2_token_command is not None or self.oauth2_token_file is not None


class Pop3Source(Source):
    """A POP3 mailbox (RFC 1939) with TLS, SASL and pipelining."""

    config_model = Pop3Config
    config: Pop3Config

    def connect(self) -> Pop3Session:
        """Connect, upgrade to TLS, log in and STAT; the session is ready for ``list_messages``."""
        uses_token = self.config.uses_token
        session = Pop3Session(self.config, self.context, self.name,
                              password=None if uses_token else self._read_password,
                              token=self._read_token if uses_token else None)
        session.open()
        return session

    def describe(self) -> str:
        """E.g. ``pop3s://user@host:995 (auth auto)``; never includes secrets."""
        cfg = self.config
        scheme = "pop3s" if cfg.tls == "implicit" else "pop3"
        extras = {"starttls": ["starttls"], "none": ["no TLS"]}.get(cfg.tls, [])
        if not cfg.tls_verify:
            extras.append("certificate NOT verified")
        extras.append(f"auth {cfg.auth}")
        return f"{scheme}://{cfg.username}@{cfg.host}:{cfg.server_port} ({', '.join(extras)})"

    def mailbox_identity(self) -> str:
        """``pop3://user@host:port`` (host lower-cased): the maildrop this source reads."""
        cfg = self.config
        return f"pop3://{cfg.username}@{cfg.host.lower().rstrip('.')}:{cfg.server_port}"

    def _label(self) -> str:
        return f"{self.config.username}@{self.config.host}"

    def _read_secret_file(self, path: Path, what: str) -> str:
        resolved = self.context.resolve(path)
        try:
            value = resolved.read_text(encoding="utf-8").strip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise AuthenticationError(f"{self._label()}: cannot read {what} {str(resolved)!r}: {reason}") from None
        if not value:
            raise AuthenticationError(f"{self._label()}: {what} {str(resolved)!r} is empty")
        return value

    def _read_password(self) -> str:
        if self.config.password_file is not None:
            return self._read_secret_file(self.config.password_file, "password_file")
        value = secret_value(self.config.password)
        if value is None:
            raise AuthenticationError(f"{self._label()}: no password configured")
        return value

    def _read_token(self) -> str:
        if self.config.oauth2_token_command is not None:
            return run_token_command(self.config.oauth2_token_command, self._label(),
                                     where=f"sources.{self.name}.oauth2_token_command")
        if self.config.oauth2_token_file is not None:
            return self._read_secret_file(self.config.oauth2_token_file, "oauth2_token_file")
        raise AuthenticationError(f"{self._label()}: no oauth2 token source configured")
