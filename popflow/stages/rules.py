"""The built-in filter and router: the config's ``filters:`` and ``routes:`` as a plugin.

Registered like any third-party plugin (see :data:`popflow.plugins.DEFAULT_PLUGINS`), with
``trylast`` so a plugin's own filter or router is asked first.
"""

from __future__ import annotations

from popflow.config import Config, FilterRule, RouteRule
from popflow.hookspecs import hookimpl
from popflow.message import Message
from popflow.stages.match import Matcher
from popflow.verdicts import FilterDecision


class ConfigRules:
    """Applies the config's filters and routes; one instance per plugin manager."""

    def __init__(self) -> None:
        self.filters: list[tuple[bool, Matcher, int]] = []
        self.routes: list[tuple[Matcher | None, RouteRule]] = []

    @hookimpl
    def popflow_startup(self, config: Config) -> None:
        """Compile the config's rules."""
        self.filters = [self._compile_filter(rule, index) for index, rule in enumerate(config.filters)]
        self.routes = [(Matcher(rule.match) if rule.match else None, rule) for rule in config.routes]

    @staticmethod
    def _compile_filter(rule: FilterRule, index: int) -> tuple[bool, Matcher, int]:
        keep = rule.keep is not None
        match = rule.keep if keep else rule.drop
        assert match is not None  # guaranteed by FilterRule's validator
        return keep, Matcher(match), index

    @hookimpl(trylast=True)
    def popflow_filter(self, message: Message) -> FilterDecision | None:
        """The first config filter whose rule matches decides."""
        for keep, matcher, index in self.filters:
            if matcher.matches(message):
                action = "keep" if keep else "drop"
                return FilterDecision(keep, f"filters[{index}] ({action})")
        return None

    @hookimpl(trylast=True)
    def popflow_route(self, message: Message) -> list[str] | None:
        """Every matching route's sinks, in order, until a route with ``stop: true`` matches."""
        sinks: list[str] = []
        for matcher, rule in self.routes:
            if matcher is None or matcher.matches(message):
                sinks.extend(sink for sink in rule.sinks if sink not in sinks)
                if rule.stop:
                    break
        return sinks
