"""The broker's Prometheus metrics, in a registry of their own.

Each :class:`Metrics` owns a fresh ``CollectorRegistry`` rather than the
process-global one, so several apps in one process (and every test) count
apart. The service calls the ``observe_*`` and ``set_*`` methods; the HTTP
layer only renders.

Label values are codes the broker chooses (message kinds, outcomes, receipt
statuses, reason codes, queue names), never anything from a message and never
an id: a label per message id would both leak metadata and explode the series
count. Callers must pass only such bounded values.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

__all__ = ["MESSAGE_SECONDS_BUCKETS", "Metrics"]

#: Processing latency from 1 ms to 5 s: verify + policy + audit + confirmed publish.
MESSAGE_SECONDS_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class Metrics:
    """Counters, a latency histogram and queue gauges of one broker instance."""

    #: The Content-Type of :meth:`render`'s output (the classic text format,
    #: which every Prometheus version scrapes).
    content_type: Final = CONTENT_TYPE_PLAIN_0_0_4

    def __init__(self) -> None:
        """Create the metrics in a registry owned by this object."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._messages = Counter(
            "backa_messages",
            "Ingress messages the broker decided, by kind and outcome.",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self._receipts = Counter(
            "backa_receipts",
            "Signed receipts the broker recorded, by status.",
            ["status"],
            registry=self.registry,
        )
        self._seconds = Histogram(
            "backa_message_seconds",
            "Seconds from taking an ingress message to acking it.",
            buckets=MESSAGE_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self._queue_depth = Gauge(
            "backa_queue_depth",
            "Messages ready in a queue, as last seen by the broker.",
            ["queue"],
            registry=self.registry,
        )
        self._rejections = Counter(
            "backa_rejections",
            "Messages the broker rejected, by reason code.",
            ["reason"],
            registry=self.registry,
        )
        self._open_matters = Gauge(
            "backa_open_matters",
            "Matters with an open deadline, by rule, as last seen by the watchdog.",
            ["rule"],
            registry=self.registry,
        )
        self._rules_seen: set[str] = set()
        self._oldest_matter = Gauge(
            "backa_oldest_open_matter_seconds",
            "How long the oldest open matter has been past its deadline (0: none is late).",
            registry=self.registry,
        )

    def observe_message(self, kind: str, outcome: str, seconds: float) -> None:
        """Count one decided message and record how long it took."""
        self._messages.labels(kind=kind, outcome=outcome).inc()
        self._seconds.observe(seconds)

    def observe_rejection(self, reason: str) -> None:
        """Count one rejection under its reason code."""
        self._rejections.labels(reason=reason).inc()

    def observe_receipt(self, status: str) -> None:
        """Count one recorded receipt under its status."""
        self._receipts.labels(status=status).inc()

    def set_queue_depth(self, queue: str, depth: int) -> None:
        """Set the last seen number of ready messages in ``queue``."""
        self._queue_depth.labels(queue=queue).set(depth)

    def set_open_matters(self, by_rule: dict[str, int], oldest_late_s: float) -> None:
        """Set the open matters per rule (rules with none go to 0) and the oldest lateness."""
        for rule in self._rules_seen - set(by_rule):
            self._open_matters.labels(rule=rule).set(0)
        self._rules_seen |= set(by_rule)
        for rule, count in by_rule.items():
            self._open_matters.labels(rule=rule).set(count)
        self._oldest_matter.set(max(0.0, oldest_late_s))

    def render(self) -> bytes:
        """Every metric in the Prometheus text exposition format."""
        return generate_latest(self.registry)
