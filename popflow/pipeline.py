"""The stages before delivery: parse → scan → filter → transform → route.

Each stage is a hook called through pluggy; a failure is classified by what the runner does next
(see :mod:`popflow.errors`) and logged with the plugin's name, the hook and the UIDL. A message
comes out either as a :class:`~popflow.outcome.Delivery` (the message and its sinks, for the
deliverer) or with a final :class:`~popflow.outcome.Outcome` (dropped, quarantined, dead letter,
no route, deferred). Dead letters and quarantine entries are written by :mod:`popflow.holding`.
"""

from __future__ import annotations

import logging

from popflow.errors import DeadLetterError, DeferMessage, PopflowError, RetryableError, describe_error
from popflow.holding import Holding
from popflow.hookcall import PluginHookError, notify_failed
from popflow.message import Message
from popflow.outcome import Delivery, Outcome
from popflow.plugins import PopflowPluginManager
from popflow.raw import RawMessage
from popflow.verdicts import FilterDecision, ScanVerdict

log = logging.getLogger(__name__)

__all__ = ["Pipeline"]


class Pipeline:
    """Runs the pre-delivery stages for one message; what it gives up on goes to ``holding``."""

    def __init__(self, pm: PopflowPluginManager, holding: Holding, known_sinks: set[str]) -> None:
        self.pm = pm
        self.holding = holding
        self.known_sinks = known_sinks
        # The hook callers, looked up once: pluggy keeps one per spec'd hook for the manager's
        # life and a plugin registered later joins it, so nothing is missed.
        hook = pm.hook
        self._parse_hook = hook.popflow_parse
        self._scan_hook = hook.popflow_scan
        self._filter_hook = hook.popflow_filter
        self._transform_hook = hook.popflow_transform
        self._route_hook = hook.popflow_route

    # -- the stages ---------------------------------------------------------------------------
    def prepare(self, raw: RawMessage, source: str, uidl: str, *, scan: bool = True) -> Delivery | Outcome:
        """Parse, scan, filter, transform and route one message.

        Returns the message and its sinks when it must be delivered, or the final outcome when it
        must not (dropped, quarantined, dead letter, no route, deferred).
        """
        message: Message | None = None
        stage = "parse"
        try:
            message = self._parse(raw, source, uidl)
            if scan:
                stage = "scan"
                scanned = self._scan(message, raw)
                if scanned is not None:
                    return scanned
            stage = "filter"
            decision: FilterDecision | None = self._filter_hook(message=message)
            if decision is not None and not decision.keep:
                return Outcome("dropped", decision.reason or "dropped by a filter", message)
            stage = "transform"
            self._transform_hook(message=message)
            stage = "route"
            sinks = self._route_hook(message=message)
            routed = list(dict.fromkeys(sinks or []))
            unknown = [name for name in routed if name not in self.known_sinks]
            if unknown:
                raise DeadLetterError(f"route names unknown sink(s): {', '.join(unknown)}")
            if not routed:
                return Outcome("no_route", "no route matched", message)
            return Delivery(raw, message, routed)
        except (DeferMessage, RetryableError) as exc:
            self._failed(message, stage, exc, uidl)
            return Outcome("deferred", f"{stage}: {describe_error(exc)}", message)
        except (PluginHookError, DeadLetterError, PopflowError, Exception) as exc:
            self._failed(message, stage, exc, uidl)
            self.holding.dead_letter(raw, source, uidl, message, sink=None, stage=stage, error=describe_error(exc),
                                     attempts=1)
            return Outcome("dead_letter", f"{stage}: {describe_error(exc)}", message)

    def _parse(self, raw: RawMessage, source: str, uidl: str) -> Message:
        message = self._parse_hook(raw=raw, source=source)
        if message is None:
            raise DeadLetterError("no parser returned a message")
        if message.source != source:  # the built-in parser set it already
            message.source = source
        message.uidl = uidl
        if not message.has_raw:
            message.attach_raw(raw)
        return message

    def _scan(self, message: Message, raw: RawMessage) -> Outcome | None:
        try:
            verdicts: list[ScanVerdict] = self._scan_hook(message=message)
        except PluginHookError as exc:
            log.error("scan failed for %s/%s: %s", message.source, message.uidl, exc)
            verdicts = [ScanVerdict("error", exc.plugin, reason=str(exc.error), on_error="defer")]
        if not verdicts:
            return None  # no scanner answered (none installed, or none configured)
        infected = [v for v in verdicts if v.infected]
        errors = [v for v in verdicts if v.status == "error"]
        if infected or any(v.on_error == "quarantine" for v in errors):
            entry = self.holding.quarantine(raw, message, infected + errors)
            names = ", ".join(v.signature or v.reason or v.scanner for v in infected + errors)
            return Outcome("quarantined", f"quarantine #{entry}: {names}", message)
        deferring = [v for v in errors if v.on_error == "defer"]
        if deferring:
            reasons = "; ".join(f"{v.scanner}: {v.reason}" for v in deferring)
            raise DeferMessage(f"scanner unavailable ({reasons})")
        for verdict in errors:  # on_error: deliver
            message.tags.add("unscanned")
            message.meta.setdefault("popflow.unscanned", []).append(f"{verdict.scanner}: {verdict.reason}")
        if verdicts and not errors:
            message.tags.add("scanned")
        return None

    def _failed(self, message: Message | None, stage: str, error: BaseException, uidl: str) -> None:
        plugin = getattr(error, "plugin", None)
        log.warning("%s failed for uidl %s%s: %s", stage, uidl, f" (plugin {plugin})" if plugin else "",
                    describe_error(error))
        notify_failed(self.pm, message, stage, error)

