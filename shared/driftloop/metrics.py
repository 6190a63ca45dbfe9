"""The one metrics helper: metrics every service exports, in base units, with bounded labels."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from aiokafka import TopicPartition
from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter(
    "driftloop_messages_total",
    "Messages handled, by service, topic and outcome (ok, rejected, duplicate, error).",
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
CONSUMER_LAG = Gauge(
    "driftloop_consumer_lag",
    "Records behind the partition's end after the last handled batch, by service, topic and partition.",
    ["service", "topic", "partition"],
)


@contextmanager
def timed_batch(service: str, topic: str, size: int) -> Iterator[None]:
    """Observe one batch's size and handling time."""
    BATCH_SIZE.labels(service, topic).observe(size)
    start = time.perf_counter()
    try:
        yield
    finally:
        BATCH_SECONDS.labels(service, topic).observe(time.perf_counter() - start)


def next_offsets(records: Sequence[Any]) -> dict[TopicPartition, int]:
    """The offset after each partition's last record in a batch."""
    return {TopicPartition(r.topic, r.partition): r.offset + 1 for r in records}


def record_lag(service: str, consumer: Any, nexts: Mapping[TopicPartition, int]) -> None:
    """Set the lag of every partition in a handled batch (`next_offsets`) from the consumer's
    high-water marks."""
    for tp, after in nexts.items():
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # a consumer without fetch positions (e.g. an in-memory test broker)
            return
        if highwater is not None:
            CONSUMER_LAG.labels(service, tp.topic, str(tp.partition)).set(max(0, highwater - after))


def count(service: str, topic: str, outcome: str, n: int = 1) -> None:
    """Count `n` messages of one outcome."""
    if n:
        MESSAGES.labels(service, topic, outcome).inc(n)
