"""Timestamps as the state store keeps them: timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


def as_aware(value: datetime | None) -> datetime | None:
    """SQLite drops tz info: read naive datetimes back as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
