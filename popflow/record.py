"""What a plugin's ``meta`` becomes in JSON: one rule per type, the same for every sink.

The database rows, the webhook payload and the eml sidecar all call :func:`json_value`, so one
``meta`` gives the same JSON everywhere. The rules (documented in docs/delivery.md):

* ``None``, ``bool``, ``int``, ``str`` and finite ``float``: as they are;
* a non-finite ``float`` (JSON has none): the string ``"nan"``, ``"inf"`` or ``"-inf"``;
* ``bytes``, ``bytearray``, ``memoryview``: standard base64 (padded), lossless for any bytes;
* ``datetime``, ``date``, ``time``: ISO 8601 (``isoformat()``);
* a mapping: an object with ``str(key)`` keys; ``list``/``tuple``: an array;
* ``set``/``frozenset``: an array sorted by ``str`` of each item;
* a pydantic model, a dataclass: its fields (then these rules); an ``Enum``: its value;
* ``pathlib`` paths, ``UUID``: ``str()``;
* anything else: :class:`~popflow.errors.DeadLetterError` — it is never guessed at, so nothing is
  silently lost; the message is dead-lettered (not retried: the same meta would fail again).

A sink may still adapt strings to its storage (the database sink replaces NUL and lone
surrogates, and notes it in ``defects``); the raw bytes stay the source of truth.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import math
import uuid
from collections.abc import Mapping
from datetime import date, datetime, time
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel

from popflow.errors import DeadLetterError


def json_value(value: Any, path: str = "meta") -> Any:
    """A JSON-ready copy of ``value`` by the module's rules; ``path`` names it in the error."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): json_value(item, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, set | frozenset):
        return [json_value(item, f"{path}[]") for item in sorted(value, key=str)]
    if isinstance(value, BaseModel):
        return json_value(value.model_dump(), path)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_value(dataclasses.asdict(value), path)
    if isinstance(value, enum.Enum):
        return json_value(value.value, path)
    if isinstance(value, PurePath | uuid.UUID):
        return str(value)
    raise DeadLetterError(f"{path} cannot be JSON: a {type(value).__name__} value")
