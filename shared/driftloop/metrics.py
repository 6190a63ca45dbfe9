"""The one metrics helper: metrics every service exports, in base units, with bounded labels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter(
    "driftloop_messages_total",
    "Messages handled (counted once their offsets are committed), by service, topic and outcome (ok, "
    "rejected, duplicate).",
    ["service", "topic", "outcome"],
)
DEAD_LETTERS = Counter(
    "driftloop_dead_letters_total",
    "Inputs sent to the dead-letter topic, by service and reason.",
    ["service", "reason"],
)
BATCH_SIZE = Histogram(
    "driftloop_batch_size",
    "Records per consumed batch.",
    ["service", "topic"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
BATCH_SECONDS = Histogram(
    "driftloop_batch_duration_seconds",
    "Time to handle one consumed batch, publishing included.",
    ["service", "topic"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
MODEL_VERSION = Gauge(
    "driftloop_model_version",
    "Champion version a service currently uses, by model.",
    ["service", "model"],
)
UP = Gauge("driftloop_service_up", "1 while the service is running.", ["service"])
SPECS_REFUSED = Gauge(
    "driftloop_specs_refused",
    "Model spec files the service refused at start-up (their models are not served; see /readyz).",
    ["service"],
)
CONSUMER_LAG = Gauge(
    "driftloop_consumer_lag",
    "Records between the service's committed offset and the partition's end (high watermark), by "
    "service, topic and partition: updated after every fetch, whether or not a batch succeeds.",
    ["service", "topic", "partition"],
)
STALLED = Gauge(
    "driftloop_consumer_stalled_seconds",
    "Seconds since a consumer last committed while records wait for it (0 when it keeps up), by "
    "service and consumer.",
    ["service", "consumer"],
)
BATCH_FAILURES = Counter(
    "driftloop_batch_failures_total",
    "Failed attempts to handle and commit a batch, by service, consumer and kind: transient (an "
    "infrastructure fault, retried until it heals) or record (suspected bad input: retried once, "
    "then isolated and dead-lettered).",
    ["service", "consumer", "kind"],
)


class Tally:
    """Metric changes of one batch, applied once its offsets are committed: a batch handled again
    (a retry, a rewind, the search for a bad record) changes every metric once."""

    def __init__(self) -> None:
        self._changes: list[tuple[Callable[[float], None], float]] = []

    def inc(self, child: Any, amount: float = 1) -> None:
        """`child.inc(amount)` later (a labelled counter or gauge); nothing for 0."""
        if amount:
            self._changes.append((child.inc, amount))

    def set(self, child: Any, value: float) -> None:
        """`child.set(value)` later."""
        self._changes.append((child.set, value))

    def observe(self, child: Any, value: float) -> None:
        """`child.observe(value)` later (a labelled histogram)."""
        self._changes.append((child.observe, value))

    def count(self, service: str, topic: str, outcome: str, n: int = 1) -> None:
        """`count(...)` later."""
        self.inc(MESSAGES.labels(service, topic, outcome), n)

    def apply(self) -> None:
        """Apply the changes (once)."""
        changes, self._changes = self._changes, []
        for change, value in changes:
            change(value)
