"""Inference use case: a batch of requests → one result each (errors included) → `predictions.results`."""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import ConsumerRecord
from prometheus_client import Counter

from driftloop.aggregates import History
from driftloop.contracts import InvalidInput, result_json
from driftloop.fastpath import Handled, Outbox, Output
from driftloop.features import missing_features, time_parts
from driftloop.kafka import triage
from driftloop.metrics import Tally
from driftloop.online import FEATURES_FIELD, OnlineStore, decode_stored
from driftloop.settings import Topics
from driftloop.spec import ModelSpec
from driftloop.tracing import Tracing
from driftloop_inference.adapters import ModelHolder
from driftloop_inference.domain import Lineup, Request, Scored, read_request, score

SERVICE = "inference"

SHADOW = Counter(
    "driftloop_shadow_predictions_total",
    "Answers of shadow challengers (to predictions.shadow), by model and version.",
    ["model", "version"],
)
PREDICTIONS = Counter(
    "driftloop_predictions_total",
    "Results given, by model, serving version (`none` for an error result: no version served it), "
    "outcome (ok or error), the error's reason (`no_champion`, `invalid_schema`, ...; empty when ok) "
    "and transport (`kafka`: on predictions.results; `http`: answered over the v2 HTTP API).",
    ["model", "version", "outcome", "reason", "transport"],
)
# A Kafka header on the requests and results of HTTP predictions logged to the topics: the Kafka
# path does not answer them again; the monitor reads them as any other.
LOGGED = ("driftloop-transport", b"http")


def _salvage_id(raw: bytes | None) -> tuple[str, str] | None:
    """(request_id, model) from a request too broken to parse, when they can still be read
    (the standard library's lenient parser also reads NaN and Infinity) and written back: an id
    that is not valid UTF-8 (a lone surrogate) cannot go into a result."""
    try:
        data = json.loads(raw or b"")
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("request_id"), str) or not data["request_id"]:
        return None
    request_id, model = data["request_id"][:256], data.get("model")
    model = model[:64] if isinstance(model, str) else ""
    try:
        request_id.encode(), model.encode()
    except UnicodeEncodeError:
        return None
    return request_id, model


def error_reason(error: str) -> str:
    """The machine-readable reason at the head of a result's error (a bounded label value).

    >>> error_reason("invalid_schema: features.x0: ..."), error_reason("no_champion")
    ('invalid_schema', 'no_champion')
    """
    return error.partition(":")[0][:40]


def count(
    tally: Tally,
    results: Sequence[Mapping[str, Any]],
    shadow: Sequence[Mapping[str, Any]],
    specs: Mapping[str, ModelSpec],
    transport: str,
) -> None:
    """Results and shadow answers by model, version and outcome, into `tally`."""
    shadows = collections.Counter((r["model"], r["model_version"]) for r in shadow)
    for (model, version), n in shadows.items():
        tally.inc(SHADOW.labels(model, str(version)), n)
    answers = collections.Counter(
        (r["model"] if r["model"] in specs else "_unknown", r["model_version"], r["error"]) for r in results
    )
    for (model, version, error), n in answers.items():
        labels = (model, "none", "error", error_reason(error)) if error else (model, str(version), "ok", "")
        tally.inc(PREDICTIONS.labels(*labels, transport), n)


def _request_or_error(record: ConsumerRecord) -> Request | dict[str, Any]:
    """The request; or, for an invalid one that still names its id, an error result for it."""
    try:
        return read_request(record.value)
    except InvalidInput as exc:
        salvaged = _salvage_id(record.value)
        if salvaged is None:
            raise
        return result_json(salvaged[0], salvaged[1], 0, error=str(exc))


class InferenceHandler:
    def __init__(
        self,
        specs: Mapping[str, ModelSpec],
        holder: ModelHolder,
        online: OnlineStore,
        topics: Topics,
        tracing: Tracing | None = None,
        group: str = SERVICE,
    ) -> None:
        self.specs = specs
        self.holder = holder
        self.online = online
        self.topics = topics
        self.tracing = tracing
        self.group = group

    async def handle(self, records: Sequence[ConsumerRecord]) -> Handled:
        """One result per request (keyed by request id), dead letters for the unreadable. Requests
        served over HTTP and logged here (`LOGGED`) were answered already: they are skipped."""
        lineup = self.holder.lineup  # one consistent set of models for the whole batch
        started = time.perf_counter()
        records = [r for r in records if not r.headers or LOGGED not in r.headers]
        spans = self.tracing.start(records, self.group) if self.tracing else None
        parsed, dead = triage(SERVICE, records, _request_or_error)
        early = [p for p in parsed if isinstance(p, dict)]
        decoded = time.perf_counter()
        answered, scored = await self.answer([p for p in parsed if isinstance(p, Request)], lineup)
        scoring_done = time.perf_counter()
        results = early + answered
        topic, shadow_topic = self.topics.predictions_results, self.topics.predictions_shadow
        out = Outbox(
            self.topics.events_dlq,
            [Output(topic, r["request_id"].encode(), orjson.dumps(r)) for r in results]
            if not spans
            else self._traced(topic, results, spans),
        )
        out.outputs += [
            Output(shadow_topic, r["request_id"].encode(), orjson.dumps(r)) for r in scored.shadow
        ]
        out.dead_letters(dead)
        stages = {
            "decode": decoded - started,
            "features": scored.stages.pop("features"),
            **scored.stages,
            "encode": time.perf_counter() - scoring_done,
        }
        count(out.tally, results, scored.shadow, self.specs, "kafka")
        return out.handled(stages=stages)

    async def answer(self, requests: list[Request], lineup: Lineup) -> tuple[list[dict[str, Any]], Scored]:
        """A result per request, in request order (an error result for one that cannot be served),
        and the scoring's shadow answers and stage times (`features` too): what both transports do."""
        started = time.perf_counter()
        specs = self._reading(lineup)
        ready, failed = await self._complete(requests, specs)
        ready = self._with_time_parts(ready, datetime.now(UTC), specs)
        completed = time.perf_counter()
        scored = score(ready, self.specs, lineup)
        scored.stages["features"] = completed - started
        if not failed:
            return scored.results, scored
        served = iter(scored.results)
        return [failed[i] if i in failed else next(served) for i in range(len(requests))], scored

    def _traced(self, topic: str, results: list[dict[str, Any]], spans: dict[str, Any]) -> list[Output]:
        """The results, each traced request's with the context of its span (ended here)."""
        assert self.tracing is not None
        outputs = []
        for r in results:
            span = spans.pop(r["request_id"], None)
            headers = () if span is None else self.tracing.finish(span, r)
            outputs.append(Output(topic, r["request_id"].encode(), orjson.dumps(r), headers))
        for span in spans.values():  # a request id answered by none of the results: nothing to carry
            span.end()
        return outputs

    def _reading(self, lineup: Lineup) -> dict[str, ModelSpec]:
        """The spec each model's requests are read with: its champion's, the one it was trained
        with (a spec applied since waits for a champion trained on it); else the one in force."""
        return {
            m: lineup.champions[m].feature_set.spec if m in lineup.champions else s
            for m, s in self.specs.items()
        }

    @staticmethod
    def _with_time_parts(
        requests: list[Request], now: datetime, specs: Mapping[str, ModelSpec]
    ) -> list[Request]:
        """Time-part inputs as of the request's arrival (request values win: a replay may send them)."""
        timed = {m: time_parts(spec, now) for m, spec in specs.items() if spec.time_parts}
        if not timed:
            return requests
        return [
            dataclasses.replace(r, features={**timed[r.model], **r.features}) if r.model in timed else r
            for r in requests
        ]

    async def _complete(
        self, requests: list[Request], specs: Mapping[str, ModelSpec]
    ) -> tuple[list[Request], dict[int, dict[str, Any]]]:
        """Fill in stored entity features (request values win) with one round trip. A request that
        still lacks features because its entity is unknown, or the store is down, gets an error
        result (by position); the others go on, in order."""
        wanted = [i for i, r in enumerate(requests) if r.entity_id and r.model in specs]
        if not wanted:
            return requests, {}
        stored = await self.online.fetch([(requests[i].model, requests[i].entity_id or "") for i in wanted])
        found = dict(zip(wanted, stored or [None] * len(wanted), strict=True))
        ready: list[Request] = []
        failed: dict[int, dict[str, Any]] = {}
        now = time.time()
        for i, request in enumerate(requests):
            if i not in found:
                ready.append(request)
                continue
            values = found[i]
            spec = specs[request.model]
            if values is not None:
                merged = {**decode_stored(spec, values[FEATURES_FIELD]), **request.features}
                if spec.aggregates:  # as of now, from the entity's events: the training rows' code
                    merged.update(History.from_fields(spec, values).values(now))
                ready.append(dataclasses.replace(request, features=merged, filled=True))
            elif not missing_features(spec, request.features):
                ready.append(request)  # it carries everything itself
            else:
                why = "online_store_unavailable" if stored is None else f"unknown_entity: {request.entity_id}"
                failed[i] = result_json(request.request_id, request.model, 0, error=why)
        return ready, failed
