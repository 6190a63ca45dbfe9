"""Traffic for the benchmarks: a reader that notes when each answer arrives, bursts sent as fast as
the producer can, fixed offered loads, and latency percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

import numpy as np
import orjson
from aiokafka import ConsumerRecord

from driftloop.fastpath import BatchSender, Output
from driftloop.kafka import tail_from_end
from driftloop.settings import ServiceSettings


class Reader:
    """Reads a response topic and records, per request id, when each response arrived."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.arrivals: dict[bytes, list[float]] = {}
        self.versions: dict[bytes, int] = {}
        self.track_versions = False  # parsing results costs CPU: only during the swap
        self.answered: deque[tuple[bytes, float]] | None = None  # when set: (key, time) of every answer
        self._awaited: set[bytes] = set()  # keys `wait_for` waits for that have not arrived
        self._all_arrived = asyncio.Event()

    async def start(self) -> None:
        wait = ServiceSettings().kafka_fetch_max_wait_ms
        self.consumer = await tail_from_end(self.bootstrap, self.topic, wait)
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=20, max_records=5000)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    key = self.key(record)
                    self.arrivals.setdefault(key, []).append(now)
                    if self.answered is not None:
                        self.answered.append((key, now))
                    if self.track_versions and record.value:
                        self.versions[key] = orjson.loads(record.value)["model_version"]
                    if key in self._awaited:
                        self._awaited.discard(key)
                        if not self._awaited:
                            self._all_arrived.set()

    def key(self, record: ConsumerRecord) -> bytes:
        """What identifies an answer: its request id, the record key."""
        return record.key or b""

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.consumer.stop()

    async def wait_for(self, keys: set[bytes], timeout: float) -> None:
        """Until every key has arrived (checked as records come: polling a set of 50,000 keys
        would take CPU from what is measured), or the timeout."""
        self._awaited = keys - self.arrivals.keys()
        self._all_arrived.clear()
        if self._awaited:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_arrived.wait(), timeout)
        self._awaited = set()


async def burst(sender: BatchSender, reader: Reader, topic: str, items: list[tuple[bytes, bytes]]) -> float:
    """Requests/s answered for a burst sent as fast as the producer can."""
    started = time.perf_counter()
    for i in range(0, len(items), 2000):
        await sender.send([Output(topic, k, v) for k, v in items[i : i + 2000]])
    keys = {k for k, _ in items}
    await reader.wait_for(keys, 120)
    done = max(reader.arrivals[k][0] for k in keys if k in reader.arrivals)
    return len(keys & reader.arrivals.keys()) / (done - started)


async def offer(
    sender: BatchSender, topic: str, items: list[tuple[bytes, bytes]], rate: float, during=None
) -> dict[bytes, float]:
    """Send at a fixed rate (5 ms ticks); returns the send times; `during` runs halfway through."""
    sent: dict[bytes, float] = {}
    started = time.perf_counter()
    index = 0
    fired = during is None
    while index < len(items):
        due = min(len(items), int((time.perf_counter() - started) * rate))
        if due > index:
            chunk = items[index:due]
            now = time.perf_counter()
            await sender.send([Output(topic, k, v) for k, v in chunk])
            for k, _ in chunk:
                sent[k] = now
            index = due
        if not fired and index >= len(items) // 2:
            fired = True
            await during()
        await asyncio.sleep(0.005)
    return sent


async def offered_load(
    sender: BatchSender,
    reader: Reader,
    topic: str,
    items: list[tuple[bytes, bytes]],
    rate: float,
    during=None,
) -> tuple[dict[bytes, float], int]:
    """`offer`, then wait for the answers (up to 30 s); the send times and how many were sent."""
    sent = await offer(sender, topic, items, rate, during)
    await reader.wait_for(set(sent), 30)
    return sent, len(sent)


def latency(sent: dict[bytes, float], reader: Reader) -> dict[str, float]:
    delays = np.array([(reader.arrivals[k][0] - t) * 1000 for k, t in sent.items() if k in reader.arrivals])
    return {q: float(np.percentile(delays, p)) for q, p in (("p50", 50), ("p99", 99), ("p999", 99.9))}
