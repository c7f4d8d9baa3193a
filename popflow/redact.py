"""The process-wide list of secrets, and the forms they take on the way out.

A secret leaks in more shapes than its plain text: URL-encoded in a webhook URL, base64-encoded
inside a SASL PLAIN or XOAUTH2 response a server echoes, escaped by ``repr()`` or JSON. The
components that use a secret register it here (the config's secrets when an
:class:`~popflow.app.App` is built; the SASL strings when the POP3 login builds them);
:func:`redact` replaces every registered form with ``***``. The log formatter
(:mod:`popflow.logs`) applies it to every line as a last line of defence: the places that produce
error text scrub what they know first.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

from pydantic import BaseModel, SecretStr

MASK = "***"

MIN_SECRET = 4
"""Shorter values are not registered: replacing e.g. ``"1"`` everywhere would garble every line,
and such a value is no meaningful secret."""

log = logging.getLogger(__name__)

_lock = threading.Lock()
_forms: set[str] = set()
# Longest first, so a form that contains another is replaced whole. Replaced, never mutated:
# readers (every log line, any thread) iterate it without taking the lock.
_ordered: tuple[str, ...] = ()


def secret_forms(secret: str) -> set[str]:
    """The shapes ``secret`` takes in text: plain, URL-encoded, base64, ``repr``/JSON-escaped."""
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret),
             repr(secret)[1:-1], json.dumps(secret)[1:-1]}
    raw = secret.encode("utf-8")
    forms |= {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(),
              base64.b64encode(raw).decode().rstrip("=")}
    return {form for form in forms if len(form) >= MIN_SECRET}


def register_secret(secret: str | bytes | None) -> None:
    """Remember ``secret`` (every form of it) so :func:`redact` hides it from now on."""
    if secret is None:
        return
    if isinstance(secret, bytes):
        secret = secret.decode("utf-8", "replace")
    if len(secret) < MIN_SECRET:
        if secret:  # said once per value, without the value: the operator can choose a longer one
            _warn_short_secret(len(secret))
        return
    global _ordered
    new = secret_forms(secret) - _forms
    if not new:
        return
    with _lock:
        _forms.update(new)
        _ordered = tuple(sorted(_forms, key=len, reverse=True))


_short_warned: set[int] = set()


def _warn_short_secret(length: int) -> None:
    if length not in _short_warned:
        _short_warned.add(length)
        log.warning("a configured secret is only %d character(s) long: popflow masks secrets of at least %d "
                    "characters in log lines and error text, so use a longer one", length, MIN_SECRET)


def register_secrets(secrets: Iterable[str | bytes | None]) -> None:
    """:func:`register_secret` for each one."""
    for secret in secrets:
        register_secret(secret)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every registered secret form (and every form of ``extra``) replaced by ``***``."""
    forms: Iterable[str] = _ordered
    more = [form for secret in extra if secret and len(secret) >= MIN_SECRET for form in secret_forms(secret)]
    if more:
        forms = sorted(set(forms) | set(more), key=len, reverse=True)
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


def url_secrets(url: str) -> list[str]:
    """The credentials a URL carries: the userinfo's password, and every query value.

    (The ``user:password`` pair is included too: HTTP Basic sends it base64-encoded.)
    """
    try:
        parts = urlsplit(url)
        password = parts.password
        username = parts.username
    except ValueError:
        return []
    found = [value for _, value in parse_qsl(parts.query, keep_blank_values=False)]
    if password:  # as written (percent-encoded) and as sent
        found += [password, unquote(password), f"{unquote(username or '')}:{unquote(password)}"]
    return found


def display_url(url: str) -> str:
    """``url`` without its password and with every query value masked (for reprs and messages)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
        username = parts.username
    except ValueError:
        return MASK
    userinfo = f"{username}:{MASK}@" if parts.password is not None else f"{username}@" if username else ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{userinfo}{host}" + (f":{port}" if port is not None else "")
    query = "&".join(f"{key}={MASK}" for key, _ in parse_qsl(parts.query, keep_blank_values=True))
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


SECRET_KEYS = frozenset({"password", "secret", "token", "api_key", "apikey", "client_secret", "access_token",
                         "refresh_token", "authorization", "headers", "oauth2_token_command"})
"""Config keys whose values are secrets whatever their type (a plugin's options included)."""


def _is_url_key(key: str) -> bool:
    return key in ("url", "state", "dsn") or key.endswith("_url")


def is_secret_path(path: str) -> bool:
    """True when a config key path (``sources.a.password``, ``sinks.h.headers.X``) holds a secret."""
    parts = [part.split("[", 1)[0] for part in path.split(".")]
    return any(part.lower() in SECRET_KEYS for part in parts)


def redact_options(options: Any) -> Any:
    """A copy of a source's or sink's raw options with secret keys masked and URLs shown safely."""
    if isinstance(options, dict):
        out: dict[Any, Any] = {}
        for key, value in options.items():
            name = str(key).lower()
            if name in SECRET_KEYS:
                out[key] = {k: MASK for k in value} if isinstance(value, dict) else MASK
            elif _is_url_key(name) and isinstance(value, str):
                out[key] = display_url(value)
            else:
                out[key] = redact_options(value)
        return out
    if isinstance(options, list):
        return [redact_options(item) for item in options]
    return options


def option_secrets(value: Any, key: str = "") -> list[str]:
    """Every secret in a validated model or a raw options tree: ``SecretStr`` values, values of
    :data:`SECRET_KEYS`, and the credentials of URL-valued keys."""
    found: list[str] = []
    if isinstance(value, SecretStr):
        found.append(value.get_secret_value())
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            found += option_secrets(getattr(value, name, None), name)
    elif isinstance(value, dict):
        for name, item in value.items():
            found += option_secrets(item, key if key.lower() in SECRET_KEYS else str(name))
    elif isinstance(value, list | tuple):
        for item in value:
            found += option_secrets(item, key)
    elif isinstance(value, str):
        if key.lower() in SECRET_KEYS and key.lower() != "oauth2_token_command":
            found.append(value)
        elif _is_url_key(key.lower()):
            found += url_secrets(value)
    return found


def _clear_for_tests() -> None:
    """Forget every registered secret (tests that register throwaway values)."""
    global _ordered
    with _lock:
        _forms.clear()
        _ordered = ()
    _short_warned.clear()
