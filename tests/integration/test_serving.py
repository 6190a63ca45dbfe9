"""Inference under change, on a real broker: zero-loss swaps, shadow and canary challengers, bad
requests, and two instances rebalancing under load. Results are counted per request id straight
from `predictions.results`, so a lost or doubled answer cannot hide."""

import asyncio
import collections
import signal
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from driftloop.artifacts import ArtifactStore
from driftloop.connections import object_store
from driftloop.contracts import DeadLetter, ModelAwaitingApproval, ModelPromoted, PredictionResult
from driftloop.kafka import read_from_start
from driftloop.localstack import free_port
from driftloop.settings import ServiceSettings
from driftloop.spec import load_spec
from driftloop_inference.app import create_app as inference_app
from driftloop_inference.settings import InferenceSettings
from tests.conftest import ROOT, wait_for
from tests.helpers import (
    OtlpReceiver,
    Publisher,
    apply_models,
    by_request_id,
    collect,
    own_s3_server,
    sea_onnx,
)

GOOD = {"x0": 9.0, "x1": 9.0, "x2": 1.0}


class Setup:
    def __init__(self, kafka_bootstrap, redis_url, topics, tmp_path, mode="shadow", share=0.3, objects=None):
        objects = objects or {"object_store_url": str(tmp_path / "objects")}
        models = tmp_path / "models"
        models.mkdir(parents=True, exist_ok=True)
        text = (ROOT / "models" / "sea.yaml").read_text()
        (models / "sea.yaml").write_text(
            text + f"serving: {{challenger_mode: {mode}, canary_share: {share}}}\n"
        )
        spec = load_spec(models / "sea.yaml")
        self.store = ArtifactStore(object_store(ServiceSettings(**objects)))
        self.models = {version: sea_onnx(spec, variant=variant) for version, variant in ((1, 0), (2, 3))}
        self.events: dict = {}
        self.settings = InferenceSettings(kafka_bootstrap=kafka_bootstrap, redis_url=redis_url,
                                          topics=topics, data_dir=tmp_path / "inference", **objects,
                                          group_id=f"inference-{uuid.uuid4().hex[:8]}")  # fmt: skip
        self.bootstrap, self.topics, self.models_dir = kafka_bootstrap, topics, models
        self.bus = Publisher(kafka_bootstrap)

    async def __aenter__(self):
        await apply_models(self.bootstrap, self.topics, self.models_dir)
        for version, (onnx, classes, names) in self.models.items():
            artifact = await self.store.put(onnx)
            self.events[version] = {"model": "sea", "version": version, "artifact": artifact,
                                    "classes": classes, "feature_names": names, "reason": "test"}  # fmt: skip
        await self.bus.start()
        await self.bus.publish(self.topics.models_lifecycle, [ModelPromoted(**self.events[1])])
        self.raw = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            enable_idempotence=False,
            linger_ms=2,
            max_request_size=12_000_000,
        )
        await self.raw.start()
        return self

    async def __aexit__(self, *exc):
        await self.raw.stop()
        await self.bus.stop()

    async def consuming(self):
        """Wait until inference answers (its consumer group has joined)."""
        await self.answers(await self.requests(1, f"warm-{uuid.uuid4().hex[:6]}"), timeout=60, drain=0)

    async def requests(self, n, prefix, per_second=2000):
        """Send n good requests at a steady rate; return their ids."""
        ids = []
        for start in range(0, n, 100):
            batch = [f"{prefix}-{i}" for i in range(start, min(n, start + 100))]
            for request_id in batch:
                body = {"request_id": request_id, "model": "sea", "features": GOOD}
                await self.raw.send(
                    self.topics.predictions_requests, orjson.dumps(body), key=request_id.encode()
                )
            ids += batch
            await asyncio.sleep(100 / per_second)
        await self.raw.flush()
        return ids

    async def partitions(self):
        """The partitions of the request topic, as the broker has them."""
        consumer = await read_from_start(self.bootstrap, self.topics.predictions_requests)
        try:
            return consumer.assignment()
        finally:
            await consumer.stop()

    async def answers(self, ids, topic=None, timeout=30.0, drain=0.5):
        """Results for `ids` read from the topic's start: {request_id: [results...]}. Reads until
        every id is answered (then `drain` seconds more, to catch doubles) or the timeout."""
        topic = topic or self.topics.predictions_results
        found = await by_request_id(self.bootstrap, topic, ids, timeout, drain)
        missing = sorted(set(ids) - found.keys())
        assert not missing, f"{len(missing)} unanswered: {missing[:5]}"
        return {i: [PredictionResult.model_validate(data) for data, _ in found[i]] for i in found}


async def test_a_swap_under_load_loses_and_repeats_nothing(kafka_bootstrap, redis_url, topics, tmp_path):
    async with Setup(kafka_bootstrap, redis_url, topics, tmp_path) as s, inference_app(s.settings):
        await s.consuming()

        async def swap():
            await asyncio.sleep(0.7)
            await s.bus.publish(topics.models_lifecycle, [ModelPromoted(**s.events[2])])

        ids, _ = await asyncio.gather(s.requests(3000, "swap"), swap())
        answered = await s.answers(ids)
        assert all(len(answers) == 1 for answers in answered.values()), "a request was answered twice"
        versions = [answered[i][0].model_version for i in ids]
        assert set(versions) == {1, 2}
        first_v2 = versions.index(2)
        assert set(versions[first_v2 + 400 :]) == {2}, "the old model kept serving after the swap"


async def test_a_shadow_challenger_answers_on_the_side(kafka_bootstrap, redis_url, topics, tmp_path):
    async with Setup(kafka_bootstrap, redis_url, topics, tmp_path, "shadow") as s, inference_app(s.settings):
        await s.consuming()
        await s.bus.publish(topics.models_lifecycle, [ModelAwaitingApproval(**s.events[2])])
        await asyncio.sleep(1.5)  # the challenger is loaded off the hot path
        ids = await s.requests(300, "shadow")
        answered = await s.answers(ids)
        shadowed = await s.answers(ids, topics.predictions_shadow)
        assert {answered[i][0].model_version for i in ids} == {1}
        assert {shadowed[i][0].model_version for i in ids} == {2}
        assert all(len(v) == 1 for v in shadowed.values())


async def test_a_canary_serves_its_share(kafka_bootstrap, redis_url, topics, tmp_path):
    async with (
        Setup(kafka_bootstrap, redis_url, topics, tmp_path, "canary", 0.3) as s,
        inference_app(s.settings),
    ):
        await s.bus.publish(topics.models_lifecycle, [ModelAwaitingApproval(**s.events[2])])
        await asyncio.sleep(1.5)
        ids = await s.requests(1000, "canary")
        answered = await s.answers(ids)
        versions = collections.Counter(answered[i][0].model_version for i in ids)
        assert 0.24 < versions[2] / 1000 < 0.36, versions


async def test_bad_requests_get_errors_or_dead_letters_and_the_partition_flows(
    kafka_bootstrap, redis_url, topics, tmp_path
):
    async with Setup(kafka_bootstrap, redis_url, topics, tmp_path) as s, inference_app(s.settings):
        await s.consuming()
        bad = {
            "oversized": orjson.dumps(
                {"request_id": "oversized", "model": "sea", "features": {"x0": "x" * 10_000_000}}
            ),
            "unknown": orjson.dumps({"request_id": "unknown", "model": "../../etc", "features": GOOD}),
            "typed": orjson.dumps(
                {"request_id": "typed", "model": "sea", "features": {**GOOD, "x1": "nine"}}
            ),
            "nan": b'{"request_id": "nan", "model": "sea", "features": {"x0": NaN, "x1": 1, "x2": 1}}',
            "missing": orjson.dumps({"request_id": "missing", "model": "sea", "features": {"x0": 1}}),
        }  # fmt: skip
        for body in bad.values():  # one partition, so the good one must pass after them
            await s.raw.send_and_wait(topics.predictions_requests, body, partition=0)
        await s.raw.send_and_wait(topics.predictions_requests, b"\x00\xff not json", partition=0)
        good = {"request_id": "after", "model": "sea", "features": GOOD}
        await s.raw.send_and_wait(topics.predictions_requests, orjson.dumps(good), partition=0)
        answered = await s.answers([*bad, "after"])
        errors = {i: answered[i][0].error for i in bad}
        assert errors["unknown"] == "unknown_model"
        assert errors["typed"].startswith("wrong_type") and errors["missing"].startswith("missing_feature")
        assert "malformed_json" in errors["nan"] and "oversized" in errors["oversized"]
        assert answered["after"][0].error is None and answered["after"][0].model_version == 1
        dead = await collect(kafka_bootstrap, topics.events_dlq, DeadLetter, 1)
        assert dead[0].reason == "malformed_json" and dead[0].source_partition == 0


async def test_two_instances_rebalance_under_load_without_loss(kafka_bootstrap, redis_url, topics, tmp_path):
    async with Setup(kafka_bootstrap, redis_url, topics, tmp_path) as s, inference_app(s.settings):
        await s.consuming()
        second = inference_app(s.settings)

        async def join_later():
            await asyncio.sleep(0.5)
            await second.start()

        ids, _ = await asyncio.gather(s.requests(6000, f"scale-{uuid.uuid4().hex[:4]}", 1500), join_later())
        try:
            answered = await s.answers(ids, timeout=40)
        finally:
            await second.stop()
        repeats = sum(len(v) - 1 for v in answered.values())
        assert repeats == 0, f"{repeats} requests answered twice across the rebalance"
        assert len(answered) == len(ids)


def shares(instances) -> list[int] | None:
    """How many partitions of the request topic each instance reads, once each reads some and
    together they read all six (None before)."""
    assigned = [set(app.service.loops[0].consumer.assignment()) for app in instances]
    if not all(assigned) or len(set().union(*assigned)) != 6 or sum(map(len, assigned)) != 6:
        return None
    return [len(a) for a in assigned]


async def test_instances_join_and_leave_one_by_one_under_steady_load_losing_and_repeating_nothing(
    kafka_bootstrap, redis_url, topics, tmp_path
):
    """1 -> 2 -> 3 -> 2 -> 1 instances on six partitions while requests flow at a steady rate: each
    join and each graceful leave rebalances the group; every request is answered exactly once."""
    async with Setup(kafka_bootstrap, redis_url, topics, tmp_path) as s:
        settings = s.settings.model_copy(update={"kafka_partitions": 6})
        instances = [inference_app(settings)]
        await instances[0].start()
        try:
            await s.consuming()
            sent = asyncio.create_task(s.requests(15_000, f"steps-{uuid.uuid4().hex[:4]}", 1_000))
            for change in ("join", "join", "leave", "leave"):
                await asyncio.sleep(2.5)
                if change == "join":
                    instances.append(inference_app(settings))
                    await instances[-1].start()
                else:
                    await instances.pop().stop()
                # the group rebalanced: every instance reads a share of the six partitions
                await wait_for(lambda: shares(instances) is not None, 20, f"a rebalance after the {change}")
            ids = await sent
            answered = await s.answers(ids, timeout=60)
        finally:
            for instance in instances:
                await instance.stop()
        partitions = await s.partitions()
        assert len(partitions) == 6
        repeats = {request_id: len(v) for request_id, v in answered.items() if len(v) > 1}
        assert not repeats, f"{len(repeats)} requests answered more than once across the rebalances"
        assert len(answered) == len(ids)


async def test_entity_requests_use_the_online_store_and_fail_fast_without_it(
    kafka_bootstrap, redis_url, topics, tmp_path
):
    from datetime import UTC, datetime

    from redis.asyncio import Redis

    from driftloop.online import RedisOnlineStore

    redis = Redis.from_url(redis_url)
    stored = ("sea", "user-1", datetime.now(UTC), {"x0": 9.0, "x1": 9.0, "x2": 1.0}, ({}, []))
    await RedisOnlineStore(redis, ttl_s=60).write([stored])
    await redis.aclose()

    async def ask(s, entity, features, request_id):
        body = {"request_id": request_id, "model": "sea", "features": features, "entity_id": entity}
        await s.raw.send_and_wait(topics.predictions_requests, orjson.dumps(body))
        return (await s.answers([request_id]))[request_id][0]

    async with Setup(kafka_bootstrap, redis_url, topics, tmp_path) as s, inference_app(s.settings):
        await s.consuming()
        stored = await ask(s, "user-1", {}, "stored")
        assert stored.error is None and stored.prediction == 1 and stored.model_version == 1
        assert stored.features == {"x0": 9.0, "x1": 9.0, "x2": 1.0}  # what was served, for feedback rows
        overridden = await ask(s, "user-1", {"x0": 0.0, "x1": 0.0}, "overridden")
        assert overridden.error is None and overridden.prediction == 0  # request values win
        unknown = await ask(s, "nobody", {"x0": 1.0}, "unknown")
        assert unknown.error == "unknown_entity: nobody"
        self_sufficient = await ask(s, "nobody", GOOD, "self-sufficient")
        assert self_sufficient.error is None and self_sufficient.features is None

    down = s.settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    async with Setup(kafka_bootstrap, redis_url, topics, tmp_path / "down") as s, inference_app(down):
        await s.consuming()
        started = asyncio.get_running_loop().time()
        unavailable = await ask(s, "user-1", {}, "store-down")
        assert unavailable.error == "online_store_unavailable"
        assert asyncio.get_running_loop().time() - started < 5


@pytest.mark.parametrize("damage", ["corrupted", "deleted"])
async def test_a_damaged_artifact_is_refused_reported_and_the_old_version_keeps_serving(
    damage, kafka_bootstrap, redis_url, topics, tmp_path
):
    from prometheus_client import REGISTRY

    from driftloop.contracts import LIFECYCLE, ModelServingFailed

    def refusals() -> float:
        name = "driftloop_inference_model_load_failures_total"
        return REGISTRY.get_sample_value(name, {"model": "sea"}) or 0

    async with Setup(kafka_bootstrap, redis_url, topics, tmp_path) as s, inference_app(s.settings):
        await s.consuming()
        before = refusals()
        damaged = s.events[2]
        path = tmp_path / "objects" / "artifacts" / damaged["artifact"].uri
        if damage == "corrupted":
            path.write_bytes(b"damaged on disk")
        else:
            path.unlink()
        await s.bus.publish(topics.models_lifecycle, [ModelPromoted(**damaged)])
        ids = await s.requests(600, "after-damage", per_second=300)
        answered = await s.answers(ids)
        lifecycle = await collect(kafka_bootstrap, topics.models_lifecycle, LIFECYCLE, 3, timeout=15)
    assert {answered[i][0].model_version for i in ids} == {1}, "the damaged version served"
    assert all(answered[i][0].error is None for i in ids)
    assert refusals() == before + 1
    reports = [e for e in lifecycle if isinstance(e, ModelServingFailed)]
    assert [(r.model, r.version, r.service) for r in reports] == [("sea", 2, "inference")]
    assert ("sha256" if damage == "corrupted" else "missing") in reports[0].reason


async def test_an_object_store_outage_under_load_keeps_serving_and_a_promotion_made_in_it_serves_after(
    kafka_bootstrap, redis_url, topics, tmp_path
):
    """The S3 server stops answering for 15 s under load; a promotion is made meanwhile."""
    from driftloop.contracts import LIFECYCLE, ModelServingFailed

    with own_s3_server("serving") as (server, objects):
        s = Setup(kafka_bootstrap, redis_url, topics, tmp_path, objects=objects)
        async with s, inference_app(s.settings):
            await s.consuming()
            server.send_signal(signal.SIGSTOP)
            try:
                await s.bus.publish(topics.models_lifecycle, [ModelPromoted(**s.events[2])])
                during = await s.requests(3000, "outage", per_second=200)  # 15 s
                answered = await s.answers(during)
            finally:
                server.send_signal(signal.SIGCONT)
            served: set[int] = set()
            deadline = asyncio.get_running_loop().time() + 30
            while 2 not in served and asyncio.get_running_loop().time() < deadline:  # the store is back
                found = await s.answers(await s.requests(20, f"after-{uuid.uuid4().hex[:6]}"), drain=0)
                served.update(r[0].model_version for r in found.values())
            assert 2 in served, "the version promoted during the outage never served"
            lifecycle = await collect(kafka_bootstrap, topics.models_lifecycle, LIFECYCLE, 3, timeout=15)
    assert all(len(v) == 1 for v in answered.values()), "a request was answered twice"
    assert {answered[i][0].model_version for i in during} == {1}
    assert all(answered[i][0].error is None for i in during)
    [report] = [e for e in lifecycle if isinstance(e, ModelServingFailed)]
    assert (report.version, report.service) == (2, "inference") and "Unavailable" in report.reason


async def test_a_new_inference_instance_on_an_empty_disk_downloads_checks_and_serves_the_champion(
    kafka_bootstrap, redis_url, topics, tmp_path, s3_settings
):
    """Two inference instances on separate private directories, artifacts only through S3."""
    s = Setup(kafka_bootstrap, redis_url, topics, tmp_path, objects=s3_settings)
    second = s.settings.model_copy(update={"data_dir": tmp_path / "another-host"})
    async with s, inference_app(s.settings):
        await s.consuming()
        async with inference_app(second):
            ids = await s.requests(3000, "two-instances", per_second=500)  # through the rebalance
            answered = await s.answers(ids)
        cached = list((tmp_path / "another-host" / "artifact-cache").iterdir())
    assert [p.name for p in cached] == [s.events[1]["artifact"].sha256]
    assert {answered[i][0].model_version for i in ids} == {1}
    assert all(len(v) == 1 and v[0].error is None for v in answered.values())


async def read_records(bootstrap, topic, keys, timeout=30.0):
    """The records of `topic` with these keys, read from its start: {key: record}."""
    found = {}
    consumer = await read_from_start(bootstrap, topic)
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while not keys <= found.keys() and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                found.update((r.key, r) for r in records if r.key in keys)
    finally:
        await consumer.stop()
    assert keys <= found.keys(), f"not answered: {keys - found.keys()}"
    return found


async def test_a_traced_request_continues_its_trace_to_the_result_and_the_collector(
    kafka_bootstrap, redis_url, topics, tmp_path, monkeypatch
):
    """W3C trace context on a real broker: the result of a request sent with a `traceparent`
    carries the same trace from driftloop's span, and the span reaches an OTLP/HTTP collector."""
    trace, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    with OtlpReceiver() as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector.url)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        s = Setup(kafka_bootstrap, redis_url, topics, tmp_path)
        settings = s.settings.model_copy(update={"tracing": True})
        async with s, inference_app(settings):
            await s.consuming()
            for request_id, headers in (("traced", [("traceparent", f"00-{trace}-{parent}-01".encode())]),
                                        ("plain", [])):  # fmt: skip
                body = {"request_id": request_id, "model": "sea", "features": GOOD}
                await s.raw.send(topics.predictions_requests, orjson.dumps(body), key=request_id.encode(),
                                 headers=headers)  # fmt: skip
            await s.raw.flush()
            results = await read_records(kafka_bootstrap, topics.predictions_results, {b"traced", b"plain"})
            await wait_for(lambda: collector.spans, what="the span at the collector")
    assert "traceparent" not in dict(results[b"plain"].headers)
    carried = dict(results[b"traced"].headers)["traceparent"].decode()
    _, carried_trace, carried_span, flags = carried.split("-")
    assert (carried_trace, flags) == (trace, "01") and carried_span != parent
    [span] = collector.spans
    assert span.trace_id.hex() == trace and span.parent_span_id.hex() == parent
    assert span.span_id.hex() == carried_span
    attributes = {a.key: a.value for a in span.attributes}
    assert attributes["driftloop.request_id"].string_value == "traced"
    assert attributes["driftloop.model_version"].int_value == 1
