"""Application-side clients: publish observations, prediction requests and feedback; read results.

`PredictionClient` correlates results to requests by `request_id` over `predictions.results`;
`HttpPredictionClient` asks the same over the inference service's v2 HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import BaseModel

from driftloop.contracts import PredictionRequest, PredictionResult
from driftloop.kafka import GapGuard, TruncationWatch, encode, producer, tail_from_end
from driftloop.oip import InferenceResponse
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

    @staticmethod
    def over_http(url: str, token: str | None = None, timeout_s: float = 10.0) -> HttpPredictionClient:
        """The same client over the inference service's v2 HTTP API (`HttpPredictionClient`)."""
        return HttpPredictionClient(url, token, timeout_s)

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
        gaps = GapGuard(self._consumer, name="prediction-client")
        await gaps.from_positions()
        while True:
            batches = await gaps.getmany(timeout_ms=500)
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
        self,
        model: str,
        rows: Sequence[Mapping[str, Any]],
        entity_ids: Sequence[str | None] = (),
        explain: bool = False,
    ) -> list[PredictionResult]:
        """Results for many feature rows, in order (with each answer's `explanation` when
        `explain`); raises TimeoutError past the timeout."""
        assert self._producer is not None
        loop = asyncio.get_running_loop()
        requests = [
            PredictionRequest(
                request_id=uuid.uuid4().hex,
                model=model,
                features=dict(row),
                entity_id=entity_ids[i] if i < len(entity_ids) else None,
                explain=explain,
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
        self, model: str, features: Mapping[str, Any], entity_id: str | None = None, explain: bool = False
    ) -> PredictionResult:
        """The result for one feature row."""
        return (await self.predict_many(model, [features], [entity_id], explain))[0]


ANSWERED = ("predict", "predict_proba", "model_version", "request_id")  # the v2 outputs a result reads


class HttpPredictionClient:
    """Ask for predictions over the inference service's v2 HTTP API (the Open Inference Protocol),
    with `PredictionClient`'s methods and results. Rows that carry the same features go in one
    request; when the service refuses it for bad input, each row is asked alone, so only the rows
    at fault get an error result, as on the Kafka path. Needs the `http` extra (httpx).

    >>> # async with HttpPredictionClient("http://127.0.0.1:8005") as client:
    >>> #     result = await client.predict("sea", {"x0": 1.0, "x1": 2.0, "x2": 3.0})
    """

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._client: Any = None

    async def __aenter__(self) -> HttpPredictionClient:
        import httpx

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=self.timeout_s)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def predict_many(
        self,
        model: str,
        rows: Sequence[Mapping[str, Any]],
        entity_ids: Sequence[str | None] = (),
        explain: bool = False,
    ) -> list[PredictionResult]:
        """Results for many feature rows, in order (with each answer's `explanation` when
        `explain`); raises TimeoutError past the timeout and PermissionError when the service
        wants a (valid) token."""
        groups: dict[tuple[tuple[str, ...], bool], list[int]] = {}
        entities = [entity_ids[i] if i < len(entity_ids) else None for i in range(len(rows))]
        rows = [{k: v for k, v in row.items() if v is not None} for row in rows]  # None: absent
        for i, row in enumerate(rows):
            groups.setdefault((tuple(sorted(row)), entities[i] is not None), []).append(i)
        results: list[PredictionResult | None] = [None] * len(rows)
        answers = await asyncio.gather(
            *(
                self._infer(model, [rows[i] for i in at], [entities[i] for i in at], explain)
                for at in groups.values()
            )
        )
        for at, answered in zip(groups.values(), answers, strict=True):
            for i, result in zip(at, answered, strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    async def predict(
        self, model: str, features: Mapping[str, Any], entity_id: str | None = None, explain: bool = False
    ) -> PredictionResult:
        """The result for one feature row."""
        return (await self.predict_many(model, [features], [entity_id], explain))[0]

    async def _infer(
        self,
        model: str,
        rows: Sequence[Mapping[str, Any]],
        entities: Sequence[str | None],
        explain: bool = False,
    ) -> list[PredictionResult]:
        import httpx

        request_id = uuid.uuid4().hex
        inputs = [_tensor(name, [row[name] for row in rows]) for name in sorted(rows[0])]
        if entities[0] is not None:
            inputs.append(_tensor("entity_id", [str(e) for e in entities]))
        body: dict[str, Any] = {"id": request_id, "inputs": inputs}
        if explain:  # the explanation is an output asked for by name, beside the usual ones
            body["outputs"] = [{"name": name} for name in (*ANSWERED, "explanation")]
        try:
            answer = await self._client.post(f"/v2/models/{model}/infer", content=orjson.dumps(body))
        except httpx.TimeoutException:
            raise TimeoutError(f"no answer from {self.url} within {self.timeout_s:g}s") from None
        except httpx.TransportError as exc:
            raise ConnectionError(f"{self.url}: {exc}") from None
        if answer.status_code == 401:
            raise PermissionError(f"{self.url} wants a valid bearer token")
        if answer.status_code == 400 and len(rows) > 1:  # one row's fault: each row alone says which
            alone = [
                self._infer(model, [row], [entity], explain)
                for row, entity in zip(rows, entities, strict=True)
            ]
            return [result for answered in await asyncio.gather(*alone) for result in answered]
        if answer.status_code != 200:
            try:
                error = str(answer.json()["error"])
            except (ValueError, KeyError, TypeError):
                error = f"HTTP {answer.status_code}: {answer.text[:200]}"
            ids = [request_id] if len(rows) == 1 else [f"{request_id}-{i}" for i in range(len(rows))]
            return [PredictionResult(request_id=i, model=model, model_version=0, error=error) for i in ids]
        return _results(model, InferenceResponse.model_validate_json(answer.content))


def _tensor(name: str, values: list[Any]) -> dict[str, Any]:
    """One feature's column as a v2 tensor: FP64 when every value is a number, else BYTES (the
    service refuses a string for a numeric feature with the Kafka path's reason)."""
    numbers = all(type(v) in (int, float) for v in values)
    return {
        "name": name,
        "shape": [len(values)],
        "datatype": "FP64" if numbers else "BYTES",
        "data": values
        if numbers
        else [v if isinstance(v, str) else orjson.dumps(v).decode() for v in values],
    }


def _results(model: str, response: InferenceResponse) -> list[PredictionResult]:
    outputs = {o.name: o for o in response.outputs}
    classes = orjson.loads(str((outputs["predict_proba"].parameters or {})["classes"]))
    proba = outputs["predict_proba"].data or []
    width = len(classes)
    explained = outputs.get("explanation")
    explanations = [orjson.loads(str(e)) for e in explained.data or []] if explained is not None else None
    return [
        PredictionResult(
            request_id=request_id,
            model=model,
            model_version=version,
            prediction=prediction,
            probabilities={
                str(c): p for c, p in zip(classes, proba[k * width : (k + 1) * width], strict=True)
            },
            explanation=None if explanations is None else explanations[k],
        )
        for k, (request_id, version, prediction) in enumerate(
            zip(
                outputs["request_id"].data or [],
                outputs["model_version"].data or [],
                outputs["predict"].data or [],
                strict=True,
            )
        )
    ]
