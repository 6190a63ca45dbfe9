"""Application-side clients: publish observations, prediction requests and feedback; read results.

`PredictionClient` correlates results to requests by `request_id` over `predictions.results`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import BaseModel

from driftloop.contracts import PredictionRequest, PredictionResult
from driftloop.kafka import TruncationWatch, encode, producer, tail_from_end
from driftloop.settings import Topics


def make_producer(bootstrap: str) -> AIOKafkaProducer:
    """An application producer: acks=all, batched, no idempotence (not on the embedded broker)."""
    return producer(bootstrap, linger_ms=5)


async def send_all(
    producer: AIOKafkaProducer, topic: str, messages: Iterable[BaseModel], key_of: Any = None
) -> int:
    """Send contracts to a topic and wait for every acknowledgement; returns how many were sent."""
    futures = []
    for message in messages:
        key = key_of(message).encode() if key_of else None
        futures.append(await producer.send(topic, encode(message), key=key))
    await asyncio.gather(*futures)
    return len(futures)


class PredictionClient:
    """Ask for predictions over Kafka and await their results.

    >>> # async with PredictionClient("127.0.0.1:9092") as client:
    >>> #     result = await client.predict("sea", {"x0": 1.0, "x1": 2.0, "x2": 3.0})
    """

    def __init__(self, bootstrap: str, topics: Topics | None = None, timeout_s: float = 10.0):
        self.bootstrap = bootstrap
        self.topics = topics or Topics()
        self.timeout_s = timeout_s
        self._waiting: dict[str, asyncio.Future[PredictionResult]] = {}
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PredictionClient:
        self._consumer = await tail_from_end(self.bootstrap, self.topics.predictions_results)
        self._producer = make_producer(self.bootstrap)
        await self._producer.start()
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._producer:
            await self._producer.stop()
        if self._consumer:
            await self._consumer.stop()

    async def _read(self) -> None:
        assert self._consumer is not None
        watch = TruncationWatch(self._consumer)  # the topic may be created again
        while True:
            batches = await self._consumer.getmany(timeout_ms=500)
            await watch.fetched(sum(map(len, batches.values())))
            for records in batches.values():
                for record in records:
                    try:
                        result = PredictionResult.model_validate_json(record.value or b"")
                    except ValueError:
                        continue
                    future = self._waiting.pop(result.request_id, None)
                    if future is not None and not future.done():
                        future.set_result(result)

    async def predict_many(
        self, model: str, rows: Sequence[Mapping[str, Any]], entity_ids: Sequence[str | None] = ()
    ) -> list[PredictionResult]:
        """Results for many feature rows, in order; raises TimeoutError past the timeout."""
        assert self._producer is not None
        loop = asyncio.get_running_loop()
        requests = [
            PredictionRequest(
                request_id=uuid.uuid4().hex,
                model=model,
                features=dict(row),
                entity_id=entity_ids[i] if i < len(entity_ids) else None,
            )
            for i, row in enumerate(rows)
        ]
        futures = []
        for request in requests:
            self._waiting[request.request_id] = loop.create_future()
            futures.append(self._waiting[request.request_id])
        await send_all(
            self._producer,
            self.topics.predictions_requests,
            requests,
            key_of=lambda r: r.request_id,
        )
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), self.timeout_s))
        finally:
            for request in requests:
                self._waiting.pop(request.request_id, None)

    async def predict(
        self, model: str, features: Mapping[str, Any], entity_id: str | None = None
    ) -> PredictionResult:
        """The result for one feature row."""
        return (await self.predict_many(model, [features], [entity_id]))[0]
