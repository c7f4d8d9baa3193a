"""The webhook sink: POST each message as signed JSON to an HTTP(S) endpoint.

One pooled :class:`httpx.Client` per sink, created by :meth:`WebhookSink.open`. Every answer is
classified into what the poller does next (see ``docs/webhooks.md``):

* 2xx — delivered.
* 408, 429, 5xx, timeouts, connection errors — :class:`~popflow.errors.RetryableError`, carrying the
  receiver's ``Retry-After`` (seconds or HTTP-date, capped at ``retry_after_max``).
* 3xx and every other 4xx — :class:`~popflow.errors.DeadLetterError`: no retry can fix them.

The secret, the configured header values and any credentials in the URL never appear in an
error, a log line or :meth:`WebhookSink.describe`.
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import re
import ssl
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from popflow import __version__
from popflow.config import SinkSettings
from popflow.context import RuntimeContext
from popflow.durations import Duration, Size, Timeout
from popflow.errors import ConfigError, DeadLetterError, RetryableError
from popflow.message import Message
from popflow.redact import display_url
from popflow.sinks.base import Sink
from popflow.sinks.webhook_payload import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    build_payload,
    delivery_id,
    encode_payload,
    sign,
)

log = logging.getLogger(__name__)

USER_AGENT = f"popflow/{__version__}"
RETRYABLE_STATUSES = frozenset({408, 429})
# Headers popflow sets itself; letting the config override them would break signing or framing.
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "transfer-encoding", "connection",
     IDEMPOTENCY_HEADER.lower(), SIGNATURE_HEADER.lower()}
)
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_SNIPPET_BYTES = 200
_MAX_READ = 64 * 1024
# Values shorter than this are not scrubbed from error text: they cannot be meaningful secrets,
# and replacing e.g. "1" everywhere would garble the status codes in the message.
_MIN_SCRUB = 4


class WebhookConfig(SinkSettings):
    """Options of a ``type: webhook`` sink."""

    url: str
    secret: SecretStr | None = None
    timeout: Timeout = 10.0
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    """Extra request headers; their values are treated as secrets (never logged or shown)."""
    attachments: Literal["none", "metadata", "inline"] = "metadata"
    max_inline: Size = 1024 * 1024
    ca_file: Path | None = None
    tls_verify: bool = True
    retry_after_max: Duration = 300.0

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # The URL may carry a password or a token: repr() and str() show it without them.
        for key, value in super().__repr_args__():
            yield key, (display_url(value) if key == "url" else value)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # The message never repeats the URL: it may carry a token.
        try:
            url = httpx.URL(value)
        except (httpx.InvalidURL, TypeError, ValueError):
            raise ValueError("not a valid URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, header in value.items():
            if not _TOKEN_RE.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by popflow and cannot be configured")
            if any(char in header.get_secret_value() for char in "\r\n\0"):
                raise ValueError(f"the value of header {name!r} contains a line break")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> WebhookConfig:
        # httpx turns user:password@ into an Authorization header that silently replaces ours.
        if httpx.URL(self.url).userinfo and any(name.lower() == "authorization" for name in self.headers):
            raise ValueError("give credentials either in the URL or in an Authorization header, not both")
        return self


def parse_retry_after(value: str | None, *, cap: float, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or HTTP-date), at most ``cap``.

    None when the header is missing or unreadable; a date in the past gives 0.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    if re.fullmatch(r"\d+", value, re.ASCII):
        seconds = float(int(value))
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    return min(seconds, cap)


class _RedactHttpxUrls(logging.Filter):
    """Hide credentials and query values in the URL of httpx's own "HTTP Request" log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > 1 and isinstance(args[1], httpx.URL):
            record.args = (args[0], display_url(str(args[1])), *args[2:])
        return True


_HTTPX_FILTER = _RedactHttpxUrls()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebhookSink(Sink):
    """Deliver each message as a signed JSON ``POST`` (payload version 1)."""

    config_model = WebhookConfig
    durable_writes = True  # a 2xx answer means the receiver has it; a POST is never taken back
    config: WebhookConfig

    def __init__(self, name: str, config: WebhookConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self._client: httpx.Client | None = None
        self._target = display_url(config.url)

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Create the pooled HTTP client and warn about unsafe settings."""
        if self._client is not None:
            return
        config = self.config
        # httpx logs every request's full URL at INFO; a URL may carry a token or a password.
        httpx_log = logging.getLogger("httpx")
        if _HTTPX_FILTER not in httpx_log.filters:
            httpx_log.addFilter(_HTTPX_FILTER)
        if config.secret is None:
            log.warning("webhook sink %s has no secret: requests to %s are not signed", self.name, self._target)
        if not config.tls_verify:
            log.warning("webhook sink %s: TLS certificate verification is OFF (tls_verify: false)", self.name)
        url = httpx.URL(config.url)
        if url.scheme == "http" and not _is_loopback(url.host):
            log.warning("webhook sink %s sends mail unencrypted over http:// to %s", self.name, self._target)
        self._client = httpx.Client(
            verify=self._tls_context(),
            timeout=httpx.Timeout(config.timeout),
            follow_redirects=False,  # a redirect could send the payload elsewhere: dead-letter it
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
        )

    def _tls_context(self) -> ssl.SSLContext | bool:
        if not self.config.tls_verify:
            return False
        context = httpx.create_ssl_context()
        if self.config.ca_file is not None:
            path = self.context.resolve(self.config.ca_file)
            try:
                context.load_verify_locations(cafile=str(path))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load CA bundle {str(path)!r}: {exc}",
                                  path=f"sinks.{self.name}.ca_file") from None
        return context

    def close(self) -> None:
        """Close the HTTP client and its pooled connections."""
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- delivery ----------------------------------------------------------------------------
    def write(self, message: Message) -> None:
        """POST ``message``; return on 2xx, else raise RetryableError or DeadLetterError."""
        if self._client is None:
            self.open()
        assert self._client is not None
        delivery = delivery_id(message.source, message.uidl, self.name)
        try:
            body = encode_payload(build_payload(
                message, delivery=delivery, attachments=self.config.attachments,
                max_inline=self.config.max_inline,
            ))
        except (TypeError, ValueError) as exc:
            raise DeadLetterError(
                f"webhook {self.name}: message {message.uidl} cannot be sent as JSON: {exc}"
            ) from None
        headers = {name: value.get_secret_value() for name, value in self.config.headers.items()}
        headers["Content-Type"] = "application/json"
        headers[IDEMPOTENCY_HEADER] = delivery
        if self.config.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.config.secret.get_secret_value(), body)
        self._send("POST", body, headers, delivery)

    def _send(self, method: str, body: bytes | None, headers: dict[str, str], label: str) -> int:
        """Make one request and classify its outcome; returns the 2xx status."""
        assert self._client is not None
        try:
            with self._client.stream(method, self.config.url, content=body, headers=headers) as response:
                status, reason = response.status_code, response.reason_phrase
                snippet = self._read_snippet(response)
                retry_after = response.headers.get("Retry-After")
        except httpx.TimeoutException as exc:
            raise RetryableError(
                f"webhook {self.name}: no answer from {self._target} within {self.config.timeout:g}s "
                f"({type(exc).__name__})"
            ) from None
        except httpx.HTTPError as exc:
            raise RetryableError(
                f"webhook {self.name}: {self._target} unreachable: {type(exc).__name__}: "
                f"{self._scrub(str(exc))}"
            ) from None
        log.debug("webhook %s: %s %s answered %d (%s)", self.name, method, self._target, status, label)
        if 200 <= status < 300:
            return status
        answer = f"webhook {self.name} answered {status} {reason}".rstrip()
        detail = f"{answer} for {self._target}" + (f": {snippet}" if snippet else "")
        if status in RETRYABLE_STATUSES or 500 <= status < 600:
            raise RetryableError(
                detail, retry_after=parse_retry_after(retry_after, cap=self.config.retry_after_max)
            )
        raise DeadLetterError(detail)

    def _read_snippet(self, response: httpx.Response) -> str:
        """The start of the answer's body, for error messages; never fails, never reads it all."""
        if 200 <= response.status_code < 300:
            # Delivered once the status is in; drain a little so the connection can be reused.
            try:
                received = 0
                for chunk in response.iter_bytes():
                    received += len(chunk)
                    if received > _MAX_READ:
                        break
            except httpx.HTTPError:
                pass
            return ""
        data = b""
        try:
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) >= _MAX_READ:
                    break
        except httpx.HTTPError:
            pass
        text = " ".join(data[:_SNIPPET_BYTES].decode("utf-8", "replace").split())
        return self._scrub(text)

    def _secrets(self) -> Iterable[str]:
        if self.config.secret is not None:
            yield self.config.secret.get_secret_value()
        for value in self.config.headers.values():
            yield value.get_secret_value()
        url = httpx.URL(self.config.url)
        yield from (url.username, url.password, url.query.decode("ascii", "replace"))
        yield from (value for _, value in url.params.multi_items())

    def _scrub(self, text: str) -> str:
        """``text`` with every configured secret replaced by ``***``."""
        for value in sorted(self._secrets(), key=len, reverse=True):
            if len(value) >= _MIN_SCRUB:
                text = text.replace(value, "***")
        return text

    # -- operator views ----------------------------------------------------------------------
    def check(self) -> str:
        """Open the client and send ``HEAD`` to the URL; report what answered (any status is fine)."""
        self.open()
        try:
            try:
                status = self._send("HEAD", None, {}, "check")
            except DeadLetterError as exc:  # a 4xx to HEAD still proves the endpoint is there
                return f"reachable ({exc})"
            return f"reachable (HEAD answered {status})"
        finally:
            self.close()

    def describe(self) -> str:
        """One line for ``popflow check``: target and options, never secrets or header values."""
        config = self.config
        parts = [
            f"webhook POST {self._target}",
            "signed" if config.secret is not None else "UNSIGNED (no secret)",
            f"attachments: {config.attachments}",
            f"timeout {config.timeout:g}s",
            f"retries {config.retries}",
        ]
        if config.headers:
            parts.append("headers: " + ", ".join(f"{name}=***" for name in config.headers))
        if not config.tls_verify:
            parts.append("TLS verification OFF")
        elif config.ca_file is not None:
            parts.append(f"ca_file {config.ca_file}")
        return ", ".join(parts)
