"""Keeping the defect list useful on hostile mail: no duplicates, and a bounded length."""

from __future__ import annotations

MAX_DEFECTS = 100
"""More distinct defects than this are summarised in one last entry."""


def finish_defects(defects: list[str], limit: int = MAX_DEFECTS) -> list[str]:
    """``defects`` without repeats, in first-seen order, cut to ``limit`` plus a summary entry."""
    unique = list(dict.fromkeys(defects))
    if len(unique) <= limit:
        return unique
    return [*unique[:limit], f"... and {len(unique) - limit} more defects"]
