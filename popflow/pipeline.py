"""The stages before delivery: parse → scan → filter → transform → route.

Each stage is a hook; every plugin call is wrapped here, classified by what the runner does next
(see :mod:`popflow.errors`) and logged with the plugin's name, the hook and the UIDL. A message
either comes out routed to sinks, or with a final :class:`~popflow.outcome.Outcome` (dropped,
quarantined, dead letter, deferred).
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from popflow.errors import DeadLetterError, DeferMessage, PopflowError, RetryableError, describe_error
from popflow.hookcall import PluginHookError
from popflow.message import Message
from popflow.outcome import Outcome, Routed
from popflow.plugins import PopflowPluginManager
from popflow.raw import RawMessage
from popflow.raw_store import MessageStore
from popflow.state import StateStore
from popflow.verdicts import FilterDecision, ScanVerdict

log = logging.getLogger(__name__)

__all__ = ["Pipeline", "describe_error", "notify_delivered", "notify_failed"]  # describe_error: moved to errors


class Pipeline:
    """Runs the pre-delivery stages for one message and records quarantine and dead letters."""

    def __init__(self, pm: PopflowPluginManager, state: StateStore, store: MessageStore,
                 known_sinks: set[str]) -> None:
        self.pm = pm
        self.state = state
        self.store = store
        self.known_sinks = known_sinks

    # -- the stages ---------------------------------------------------------------------------
    def prepare(self, raw: RawMessage, source: str, uidl: str, *, scan: bool = True) -> Routed | Outcome:
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
            decision: FilterDecision | None = self.pm.hook.popflow_filter(message=message)
            if decision is not None and not decision.keep:
                return Outcome("dropped", decision.reason or "dropped by a filter", message)
            stage = "transform"
            self.pm.hook.popflow_transform(message=message)
            stage = "route"
            sinks = self.pm.hook.popflow_route(message=message)
            routed = list(dict.fromkeys(sinks or []))
            unknown = [name for name in routed if name not in self.known_sinks]
            if unknown:
                raise DeadLetterError(f"route names unknown sink(s): {', '.join(unknown)}")
            if not routed:
                return Outcome("no_route", "no route matched", message)
            return Routed(message, routed)
        except (DeferMessage, RetryableError) as exc:
            self._failed(message, stage, exc, uidl)
            return Outcome("deferred", f"{stage}: {describe_error(exc)}", message)
        except (PluginHookError, DeadLetterError, PopflowError, Exception) as exc:
            self._failed(message, stage, exc, uidl)
            self.dead_letter(raw, source, uidl, message, sink=None, stage=stage, error=describe_error(exc), attempts=1)
            return Outcome("dead_letter", f"{stage}: {describe_error(exc)}", message)

    def _parse(self, raw: RawMessage, source: str, uidl: str) -> Message:
        message = self.pm.hook.popflow_parse(raw=raw, source=source)
        if message is None:
            raise DeadLetterError("no parser returned a message")
        message.source = source
        message.uidl = uidl
        if not message.has_raw:
            message.attach_raw(raw)
        return message

    def _scan(self, message: Message, raw: RawMessage) -> Outcome | None:
        try:
            verdicts: list[ScanVerdict] = self.pm.hook.popflow_scan(message=message)
        except PluginHookError as exc:
            log.error("scan failed for %s/%s: %s", message.source, message.uidl, exc)
            verdicts = [ScanVerdict("error", exc.plugin, reason=str(exc.error), on_error="defer")]
        infected = [v for v in verdicts if v.infected]
        errors = [v for v in verdicts if v.status == "error"]
        if infected or any(v.on_error == "quarantine" for v in errors):
            entry = self.quarantine(raw, message, infected + errors)
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

    # -- records -------------------------------------------------------------------------------
    def quarantine(self, raw: RawMessage, message: Message, verdicts: list[ScanVerdict]) -> int:
        """Keep the raw bytes and verdicts; list the message in the quarantine."""
        details = [asdict(v) for v in verdicts]
        self.store.put(raw, {"source": message.source, "uidl": message.uidl, "verdicts": details})
        entry = self.state.add_quarantined(source=message.source, uidl=message.uidl, verdicts=details,
                                           sha256=raw.sha256, size=raw.size, subject=message.subject)
        log.warning("quarantined %s/%s (#%d): %s", message.source, message.uidl, entry,
                    ", ".join(v.signature or v.reason or v.status for v in verdicts))
        return entry

    def dead_letter(self, raw: RawMessage, source: str, uidl: str, message: Message | None, *,
                    sink: str | None, stage: str, error: str, attempts: int) -> int:
        """Keep the raw bytes and the error; list the dead letter."""
        self.store.put(raw, {"source": source, "uidl": uidl, "last_error": error, "stage": stage, "sink": sink})
        entry = self.state.add_dead_letter(source=source, uidl=uidl, sink=sink, stage=stage, error=error,
                                           attempts=attempts, sha256=raw.sha256, size=raw.size,
                                           subject=message.subject if message else None)
        log.error("dead letter #%d: %s/%s %s%s after %d attempt(s): %s", entry, source, uidl, stage,
                  f" to {sink}" if sink else "", attempts, error)
        return entry

    def _failed(self, message: Message | None, stage: str, error: BaseException, uidl: str) -> None:
        plugin = getattr(error, "plugin", None)
        log.warning("%s failed for uidl %s%s: %s", stage, uidl, f" (plugin {plugin})" if plugin else "",
                    describe_error(error))
        notify_failed(self.pm, message, stage, error)


def notify_failed(pm: PopflowPluginManager, message: Message | None, stage: str, error: BaseException) -> None:
    """Fire ``popflow_failed``; an observer that raises is logged, never allowed to stop the run."""
    try:
        pm.hook.popflow_failed(message=message, stage=stage, error=error)
    except Exception as exc:
        log.error("popflow_failed observer raised: %s", exc)


def notify_delivered(pm: PopflowPluginManager, message: Message, sink: str) -> None:
    """Fire ``popflow_delivered``; an observer that raises is logged and ignored."""
    try:
        pm.hook.popflow_delivered(message=message, sink=sink)
    except Exception as exc:
        log.error("popflow_delivered observer raised: %s", exc)
