"""Prometheus metrics of ``popflow run``, in a registry of their own (``prometheus-client``).

:class:`PollMetrics` is the one observer the poll loop feeds (:attr:`popflow.app.App.poll_observers`
gets :meth:`PollMetrics.observe`); :class:`DeliveryEvents` counts per-sink results from the
``popflow_delivered`` / ``popflow_failed`` hooks; :class:`StateGauges` reads the dead-letter and
quarantine totals from the state store at scrape time (they change outside the poll loop too:
``popflow dead-letters replay`` on another machine).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from popflow import hookimpl
from popflow.message import Message
from popflow.poller import PollReport

if TYPE_CHECKING:
    from popflow.ops.probe import StateProbe

log = logging.getLogger(__name__)

OUTCOMES = ("delivered", "dropped", "quarantined", "dead_letter", "deferred", "skipped", "no_route")
POLL_STATUSES = ("ok", "partial", "failed")
DELIVERY_RESULTS = ("delivered", "failed")
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
"""Seconds: an empty poll on loopback takes milliseconds, a first poll of a full mailbox minutes."""


def outcome_counts(report: PollReport) -> dict[str, int]:
    """A poll's message counts by ``outcome`` label.

    ``skipped`` counts messages skipped for the first time (a message left on the server stays
    skipped every poll, and would otherwise be counted again each minute). A message delivered to
    one sink and dead-lettered for another counts as both ``delivered`` and ``dead_letter``.
    """
    c = report.counts
    return {"delivered": c.delivered, "no_route": c.no_route, "dropped": c.dropped,
            "quarantined": c.quarantined, "dead_letter": c.dead_letters, "deferred": c.deferred,
            "skipped": c.newly_skipped}


class PollMetrics:
    """The per-source metrics; every label combination exists from the start, at 0."""

    def __init__(self, sources: Iterable[str], sinks: Iterable[str], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages = Counter("popflow_messages", "Messages handled, by source and outcome.",
                                ["source", "outcome"], registry=r)
        self.polls = Counter("popflow_polls", "Polls, by source and status (ok, partial, failed).",
                             ["source", "status"], registry=r)
        self.duration = Histogram("popflow_poll_duration_seconds", "How long a poll took.", ["source"],
                                  buckets=DURATION_BUCKETS, registry=r)
        self.last_success = Gauge("popflow_last_success_timestamp_seconds",
                                  "Unix time of the source's last successful poll (ok or partial).", ["source"],
                                  registry=r)
        self.up = Gauge("popflow_source_up", "1 when the source's last poll succeeded, else 0.", ["source"],
                        registry=r)
        self.deliveries = Counter("popflow_deliveries", "Deliveries to sinks: delivered, or failed (dead letter).",
                                  ["sink", "result"], registry=r)
        for source in sources:
            for outcome in OUTCOMES:
                self.messages.labels(source, outcome)
            for status in POLL_STATUSES:
                self.polls.labels(source, status)
            self.duration.labels(source)
        for sink in sinks:
            for result in DELIVERY_RESULTS:
                self.deliveries.labels(sink, result)

    def seed(self, source: str, up: bool | None, last_success: float | None) -> None:
        """Start from what the state store remembers, so a restart does not show a failing source as up."""
        if up is not None:
            self.up.labels(source).set(1 if up else 0)
        if last_success is not None:
            self.last_success.labels(source).set(last_success)

    def observe(self, report: PollReport) -> None:
        """Count one finished poll (the :attr:`popflow.app.App.poll_observers` callback)."""
        source = report.source
        for outcome, count in outcome_counts(report).items():
            if count:
                self.messages.labels(source, outcome).inc(count)
        status = report.status
        self.polls.labels(source, status).inc()
        self.duration.labels(source).observe(report.counts.seconds)
        succeeded = status != "failed"
        self.up.labels(source).set(1 if succeeded else 0)
        if succeeded:
            self.last_success.labels(source).set_to_current_time()

    def text(self) -> bytes:
        """The Prometheus text exposition of the registry."""
        return generate_latest(self.registry)

    def values(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample as ``{(name, sorted labels): value}``: what the status page shows."""
        found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found


class DeliveryEvents:
    """A plugin counting ``popflow_deliveries_total{sink,result}`` from the delivery hooks."""

    def __init__(self, metrics: PollMetrics) -> None:
        self.metrics = metrics

    @hookimpl
    def popflow_delivered(self, message: Message, sink: str) -> None:
        """A sink committed a message."""
        self.metrics.deliveries.labels(sink, "delivered").inc()

    @hookimpl
    def popflow_failed(self, message: Message | None, stage: str, error: BaseException) -> None:
        """``deliver:<sink>`` failures are dead letters for that sink; other stages are not deliveries."""
        if stage.startswith("deliver:"):
            self.metrics.deliveries.labels(stage.removeprefix("deliver:"), "failed").inc()


class StateGauges(Collector):
    """``popflow_dead_letters_pending``, ``popflow_quarantine_held`` and ``popflow_state_up``, read at scrape.

    When the state store does not answer, the two totals are left out (not reported as 0, which
    would look like good news) and ``popflow_state_up`` is 0.
    """

    def __init__(self, probe: StateProbe) -> None:
        self.probe = probe

    def describe(self) -> list[Metric]:
        """No samples at registration: the collector must not query the database then."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Count the pending entries now."""
        from popflow.ops.snapshot import pending_totals

        try:
            pending, held = self.probe.ask(pending_totals)
        except Exception as exc:
            log.debug("metrics: the state store did not answer: %s", exc)
            yield GaugeMetricFamily("popflow_state_up", "1 when the state store answered this scrape.", value=0)
            return
        yield GaugeMetricFamily("popflow_state_up", "1 when the state store answered this scrape.", value=1)
        yield GaugeMetricFamily("popflow_dead_letters_pending", "Dead letters waiting for a replay.", value=pending)
        yield GaugeMetricFamily("popflow_quarantine_held", "Messages held in quarantine.", value=held)


def sample(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: Any) -> float | None:
    """One value out of :meth:`PollMetrics.values`."""
    return values.get((name, tuple(sorted((key, str(value)) for key, value in labels.items()))))
