"""The one metrics helper: metrics every service exports, in base units, with bounded labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter(
    "driftloop_messages_total",
    "Messages handled (counted once their offsets are committed), by service, topic and outcome (ok, "
    "rejected, duplicate, unlabelled).",
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
    "Time the handler took for one consumed batch (sending and committing not included).",
    ["service", "topic"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
HOP_SECONDS = Histogram(
    "driftloop_record_hop_seconds",
    "Where each consumed record's time went, by service, consumer and hop: queued (from the "
    "record's timestamp to its fetch: the producer's clock; a timestamp over an hour old is an "
    "event time the application stamped, and is left out of queued and total), "
    "waiting (fetched, until its batch is handled), handling (the batch's handler; a handler may "
    "split it into its own stages, e.g. inference's decode, model and encode), acknowledged (its "
    "outputs sent until the broker acknowledged them), committed (effects and offset commit), and "
    "total (timestamp to commit). One observation per record.",
    ["service", "consumer", "hop"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
MODEL_VERSION = Gauge(
    "driftloop_model_version",
    "Champion version a service currently uses, by model.",
    ["service", "model"],
)
UP = Gauge("driftloop_service_up", "1 while the service is running.", ["service"])
SPECS_REFUSED = Gauge(
    "driftloop_specs_refused",
    "Spec versions on models.specs the service refused (the model's previous version, if any, stays "
    "in force; see /readyz).",
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
OFFSET_GAPS = Counter(
    "driftloop_consumer_offset_gaps_total",
    "Fetches that began past the offset after the last record read of a partition, by consumer and "
    "outcome: reread (the partition read again from there: a broker served a later batch before an "
    "earlier one, as the embedded broker does when producers write one partition at once) or passed "
    "(the gap outlasted `kafka_gap_wait_ms`: a transaction's marker on Apache Kafka).",
    ["consumer", "outcome"],
)
BATCH_FAILURES = Counter(
    "driftloop_batch_failures_total",
    "Failed attempts to handle and commit a batch, by service, consumer and kind: transient (an "
    "infrastructure fault, retried until it heals) or record (suspected bad input: retried once, "
    "then isolated and dead-lettered).",
    ["service", "consumer", "kind"],
)


def observe_many(child: Any, values: Sequence[float] | np.ndarray, times: int = 1) -> None:
    """`child.observe(v)` for every value (`times` times each) of a labelled histogram, counted
    in one pass per bucket: a batch of 2,000 records costs one call, not 2,000."""
    given = np.asarray(values, dtype=np.float64)
    finite = given[np.isfinite(given)]
    if not len(finite) or times <= 0:
        return
    bounds = child._upper_bounds  # prometheus_client's histogram child: per-bucket counts and sum
    counts = np.bincount(np.searchsorted(bounds, finite, side="left"), minlength=len(bounds))
    for bucket, count in zip(child._buckets, counts.tolist(), strict=False):
        if count:
            bucket.inc(count * times)
    child._sum.inc(float(finite.sum()) * times)


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

    def apply(self) -> None:
        """Apply the changes (once)."""
        changes, self._changes = self._changes, []
        for change, value in changes:
            change(value)
