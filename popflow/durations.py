"""Human-friendly durations (``30s``, ``5m``, ``2h``, ``30d``) and sizes (``512KB``, ``50MB``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE_UNITS = {"": 1, "B": 1, "KB": 1024, "K": 1024, "MB": 1024**2, "M": 1024**2, "GB": 1024**3, "G": 1024**3}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.I)
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*$", re.I)


def parse_duration(value: object) -> float:
    """Seconds from ``30s``/``5m``/``2h``/``30d``/``500ms`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m, 2h or 30d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration; use e.g. 30s, 5m, 2h or 30d")
        seconds = float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "s").lower()]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from ``512KB``/``50MB``/``1GB`` (binary multiples) or a bare number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512KB or 50MB")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a size; use e.g. 512KB or 50MB")
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


_PARSE_DURATION = BeforeValidator(parse_duration, json_schema_input_type=str | float)  # the schema takes "30s"

Duration = Annotated[float, _PARSE_DURATION]
"""A duration in seconds, written in config as ``30s``, ``5m``, ``2h`` or ``30d``."""

MIN_INTERVAL = 1.0
"""The shortest ``every:``: a faster poll only hammers the server (and a typo like ``1ms`` would)."""
MIN_TIMEOUT = 0.1
"""The shortest network timeout: below this even a loopback round trip can time out."""


def format_duration(seconds: float) -> str:
    """``0.001`` → ``1ms``, ``1.5`` → ``1.5s``: how a duration reads in an error message."""
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


def at_least(minimum: float) -> Callable[[float], float]:
    """A validator rejecting durations shorter than ``minimum`` seconds."""
    def check(seconds: float) -> float:
        if seconds < minimum:
            raise ValueError(f"must be at least {format_duration(minimum)} (got {format_duration(seconds)})")
        return seconds
    return check


Interval = Annotated[float, _PARSE_DURATION, AfterValidator(at_least(MIN_INTERVAL))]
"""A poll interval (``every:``): a :data:`Duration` of at least :data:`MIN_INTERVAL`."""

Timeout = Annotated[float, _PARSE_DURATION, AfterValidator(at_least(MIN_TIMEOUT))]
"""A network timeout: a :data:`Duration` of at least :data:`MIN_TIMEOUT`."""

Size = Annotated[int, BeforeValidator(parse_size, json_schema_input_type=str | int)]
"""A size in bytes, written in config as ``512KB`` or ``50MB`` (multiples of 1024)."""
