"""The config's ``filters:`` and ``routes:`` sections as models (applied by :mod:`popflow.stages.rules`).

Kept apart from :mod:`popflow.config` so each stays small; :mod:`popflow.config` imports them,
so ``from popflow.config import RouteRule`` goes on working.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from popflow.durations import Size


class StrictModel(BaseModel):
    """Base for config models: unknown keys are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class MatchRule(StrictModel):
    """Conditions of a filter or route; every condition given must hold (logical AND)."""

    from_: str | list[str] | None = Field(default=None, alias="from")
    to: str | list[str] | None = None
    cc: str | list[str] | None = None
    subject: str | None = None
    body: str | None = None
    header: dict[str, str] | None = None
    has_attachment: bool | None = None
    attachment: str | None = None
    larger_than: Size | None = None
    smaller_than: Size | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("subject", "body")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        return value

    @field_validator("header")
    @classmethod
    def _valid_header_regexes(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, pattern in (value or {}).items():
            try:
                re.compile(str(pattern))
            except re.error as exc:
                raise ValueError(f"invalid regular expression for header {name}: {exc}") from exc
        return {name: str(pattern) for name, pattern in value.items()} if value else value


class FilterRule(StrictModel):
    """One filter: ``drop: {match}`` or ``keep: {match}``. The first rule that matches decides."""

    drop: MatchRule | None = None
    keep: MatchRule | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> FilterRule:
        if (self.drop is None) == (self.keep is None):
            raise ValueError("a filter rule needs exactly one of 'drop' or 'keep'")
        return self


class RouteRule(StrictModel):
    """One route: the sinks that get a message when ``match`` holds (no ``match``: always)."""

    match: MatchRule | None = None
    sinks: list[str] = Field(min_length=1)
    stop: bool = False
