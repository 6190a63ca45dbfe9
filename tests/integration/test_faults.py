"""Faults on the data path, with real processes, broker and Redis: a service stopped (SIGTERM) or
killed (SIGKILL) mid-stream and started again loses nothing, and the offline store never holds a
row twice; what is delivered twice after a kill is an identical repeat."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from driftloop.contracts import FeatureRow
from driftloop.kafka import read_from_start
from driftloop.localstack import free_port, wait_port
from driftloop.store import RowStore
from tests.conftest import ROOT, wait_for
from tests.helpers import apply_models

EVENTS = 3000
RATE = 1000  # events/s


def _start(service: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", f"driftloop_{service}.app"],
        env={**os.environ, **env, "DRIFTLOOP_HTTP_PORT": str(port), "DRIFTLOOP_LOG_LEVEL": "WARNING"},
    )
    wait_port(port, 30, service)
    return proc


async def _rows(bootstrap: str, topic: str, want: set[str], timeout: float) -> list[bytes]:
    """Every record on `topic` until all of `want` arrived (by event id) or the timeout passes."""
    consumer = await read_from_start(bootstrap, topic)
    seen: list[bytes] = []
    ids: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while not want <= ids and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    seen.append(record.value)
                    ids.add(FeatureRow.model_validate_json(record.value).event_id)
    finally:
        await consumer.stop()
    return seen


@pytest.mark.parametrize("fault", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
@pytest.mark.parametrize("victim", ["ingest", "feature"])
async def test_a_service_stopped_mid_stream_loses_nothing(
    kafka_bootstrap, redis_url, topics, tmp_path, victim, fault
):
    env = {
        "DRIFTLOOP_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "DRIFTLOOP_REDIS_URL": redis_url,
        "DRIFTLOOP_OFFLINE_DIR": str(tmp_path / "offline"),
        **{f"DRIFTLOOP_TOPICS__{k.upper()}": v for k, v in topics.model_dump().items()},
    }
    await apply_models(kafka_bootstrap, topics)
    procs = {service: _start(service, env) for service in ("ingest", "feature")}
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        await asyncio.sleep(4)  # both consumer groups have joined (a join takes 3 s on tansu)
        ids = [f"e{i}" for i in range(EVENTS)]
        started = time.monotonic()
        stopped_in = None
        for i, event_id in enumerate(ids):
            body = {"event_id": event_id, "model": "sea", "entity_id": f"u{i % 50}", "label": i % 2,
                    "features": {"x0": i % 10, "x1": 1.0, "x2": 2.0}}  # fmt: skip
            await producer.send(topics.events_raw, orjson.dumps(body), key=f"u{i % 50}".encode())
            if i == EVENTS // 2:  # halfway: stop the victim, start it again at once
                await producer.flush()
                t0 = time.monotonic()
                procs[victim].send_signal(fault)
                await asyncio.to_thread(procs[victim].wait, 15)
                stopped_in = time.monotonic() - t0
                procs[victim] = _start(victim, env)
            await asyncio.sleep(max(0.0, started + (i + 1) / RATE - time.monotonic()))
        await producer.flush()
        records = await _rows(kafka_bootstrap, topics.features_computed, set(ids), timeout=60)
    finally:
        await producer.stop()
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(15)

    assert stopped_in is not None and stopped_in < 10, f"{victim} took {stopped_in:.1f} s to stop"
    rows = [FeatureRow.model_validate_json(r) for r in records]
    copies: dict[str, set[str]] = {}
    for row in rows:
        copies.setdefault(row.event_id, set()).add(row.model_dump_json())
    assert set(copies) == set(ids), f"{len(set(ids) - set(copies))} events lost"
    # at-least-once: a repeat is allowed after a kill, but only as an identical copy
    assert all(len(versions) == 1 for versions in copies.values()), (
        "an event delivered with different content"
    )
    repeats = Counter(row.event_id for row in rows) - Counter(copies.keys())
    if fault == signal.SIGTERM:
        assert not repeats, "a graceful stop must commit what it handled"
    store = RowStore(Path(env["DRIFTLOOP_OFFLINE_DIR"]))
    assert store.count("sea") == EVENTS  # no duplicate rows, none missing
    store.close()


async def test_redis_down_for_15_s_serving_goes_on_and_everything_recovers(kafka_bootstrap, topics, tmp_path):
    """Redis killed for 15 s under load, then back: inference keeps answering requests that carry
    their features, answers entity lookups with an error at once (not after a hang), serves them
    again once Redis is back; the feature service retries its batches and loses no row. Nothing
    is restarted but Redis."""
    from driftloop.artifacts import ArtifactStore
    from driftloop.contracts import ModelPromoted, PredictionResult
    from driftloop.fastpath import BatchSender, Output
    from driftloop.features import FeatureSet
    from driftloop.localstack import redis_command
    from driftloop.spec import load_spec
    from tests.helpers import sea_onnx

    redis_port, redis_dir = free_port(), tmp_path / "redis"
    redis_dir.mkdir()

    def start_redis() -> subprocess.Popen[bytes]:
        command = redis_command(redis_port, redis_dir, append_only=True)
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(redis_port, 20, "redis")
        return proc

    spec = load_spec(ROOT / "models" / "sea.yaml")
    onnx, classes, names = sea_onnx(spec)
    artifact = await ArtifactStore.at(tmp_path / "objects").put(onnx)
    assert names == FeatureSet(spec).names
    env = {
        "DRIFTLOOP_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "DRIFTLOOP_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "DRIFTLOOP_OBJECT_STORE_URL": str(tmp_path / "objects"),
        **{f"DRIFTLOOP_TOPICS__{k.upper()}": v for k, v in topics.model_dump().items()},
    }
    await apply_models(kafka_bootstrap, topics)
    redis = start_redis()
    sender = await BatchSender.connect(kafka_bootstrap, "test")
    promoted = ModelPromoted(model="sea", version=1, artifact=artifact, classes=classes,
                             feature_names=names, reason="test")  # fmt: skip
    await sender.send([Output(topics.models_lifecycle, None, promoted.model_dump_json().encode())])
    procs = {service: _start(service, env) for service in ("inference", "feature")}
    results = await read_from_start(kafka_bootstrap, topics.predictions_results)
    arrived: dict[str, tuple[float, PredictionResult]] = {}
    sent: dict[str, float] = {}

    async def read() -> None:
        while True:
            for records in (await results.getmany(timeout_ms=100)).values():
                for record in records:
                    result = PredictionResult.model_validate_json(record.value)
                    arrived.setdefault(result.request_id, (time.monotonic(), result))

    reader = asyncio.create_task(read())
    features = {"x0": 9.0, "x1": 9.0, "x2": 1.0}
    try:
        # the entity has stored features (through the feature service), and inference answers
        first = {"event_id": "seed", "model": "sea", "entity_id": "user-1", "features": features,
                 "label": 1, "event_time": "2026-11-22T10:00:00+00:00"}  # fmt: skip
        await sender.send([Output(topics.events_validated, b"user-1", orjson.dumps(first))])
        deadline = time.monotonic() + 60
        while "probe" not in arrived or arrived["probe"][1].error is not None:
            assert time.monotonic() < deadline, "inference never served the stored entity"
            arrived.pop("probe", None)
            probe = {"request_id": "probe", "model": "sea", "features": {}, "entity_id": "user-1"}
            await sender.send([Output(topics.predictions_requests, b"probe", orjson.dumps(probe))])
            await asyncio.sleep(0.5)

        events: list[str] = []
        start = time.monotonic()
        down_at = up_at = None
        tick = 0
        while time.monotonic() - start < 28:  # 100 requests/s of each kind, 100 events/s
            now = time.monotonic() - start
            if down_at is None and now >= 3:
                redis.kill()
                redis.wait()
                down_at = time.monotonic()
            if up_at is None and down_at is not None and time.monotonic() - down_at >= 15:
                redis = start_redis()
                up_at = time.monotonic()
            outputs = []
            for kind, body in (
                ("carried", {"model": "sea", "features": features}),
                ("entity", {"model": "sea", "features": {}, "entity_id": "user-1"}),
            ):
                request_id = f"{kind}-{tick}"
                sent[request_id] = time.monotonic()
                outputs.append(Output(topics.predictions_requests, request_id.encode(),
                                      orjson.dumps({"request_id": request_id, **body})))  # fmt: skip
            event_id = f"ev-{tick}"
            events.append(event_id)
            event = {"event_id": event_id, "model": "sea", "entity_id": f"u{tick % 20}", "features": features,
                     "label": 1, "event_time": "2026-11-22T10:00:01+00:00"}  # fmt: skip
            outputs.append(Output(topics.events_validated, f"u{tick % 20}".encode(), orjson.dumps(event)))
            await sender.send(outputs)
            tick += 1
            await asyncio.sleep(max(0.0, start + tick / 100 - time.monotonic()))
        deadline = time.monotonic() + 30
        while not set(sent) <= set(arrived) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        rows = await _rows(kafka_bootstrap, topics.features_computed, set(events), timeout=60)
        alive = {service: proc.poll() is None for service, proc in procs.items()}
    finally:
        reader.cancel()
        await results.stop()
        await sender.stop()
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(15)
        redis.kill()
        redis.wait()

    assert down_at is not None and up_at is not None
    assert alive == {"inference": True, "feature": True}, "a service died with Redis"
    assert set(sent) <= set(arrived), f"{len(set(sent) - set(arrived))} requests never answered"
    carried = {k: v for k, v in arrived.items() if k.startswith("carried-")}
    assert all(result.error is None for _, result in carried.values()), "a self-sufficient request failed"
    entity = [(sent[k], at, result) for k, (at, result) in arrived.items() if k.startswith("entity-")]
    failed = [(s, at) for s, at, result in entity if result.error is not None]
    assert failed and all(
        result.error == "online_store_unavailable" for _, _, result in entity if result.error
    )
    assert all(down_at - 1 <= s <= up_at + 5 for s, _ in failed), "an entity failed outside the outage"
    assert max(at - s for s, at in failed) < 5, "an entity lookup hung instead of failing fast"
    late = [result for s, _, result in entity if s > up_at + 5]
    assert late and all(result.error is None for result in late), "entity lookups did not recover"
    got = {FeatureRow.model_validate_json(r).event_id for r in rows}
    assert set(events) <= got, f"{len(set(events) - got)} feature rows lost"


class OwnBroker:
    """A broker of this test's own, to kill and start again (tansu: empty, topics created again)."""

    def __init__(self, topics) -> None:
        from driftloop.settings import ServiceSettings

        self.port = free_port()
        self.settings = ServiceSettings(kafka_bootstrap=f"127.0.0.1:{self.port}", topics=topics)
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        from driftloop.kafka import ensure_topics
        from driftloop.localstack import broker_command

        self.proc = subprocess.Popen(
            broker_command(self.port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port, 20, "broker")
        await ensure_topics(self.settings, self.settings.topics.all())
        await apply_models(self.settings.kafka_bootstrap, self.settings.topics)  # a new broker: new topics

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


class Asked:
    """Stands in for `AskRegistry`, recording what the follower asked for."""

    models = ("sea",)

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str]] = []

    async def __call__(self, models, reason: str) -> None:
        self.calls.append((sorted(models), reason))


async def test_after_the_broker_lost_its_topics_a_lifecycle_follower_reads_the_new_ones(topics):
    """tansu keeps topics in memory: after a restart they are created again, empty, and a group-less
    reader positioned past their new end gets nothing (no error) until it notices; it asks the
    registry to announce its models again."""
    from driftloop.contracts import ModelRejected
    from driftloop.fastpath import BatchSender, Output
    from driftloop.lifecycle import LifecycleFollower

    broker = OwnBroker(topics)
    bootstrap = broker.settings.kafka_bootstrap

    async def publish(versions: range) -> None:
        sender = await BatchSender.connect(bootstrap, "test")
        events = [ModelRejected(model="sea", version=v, reason="test") for v in versions]
        await sender.send(
            [Output(topics.models_lifecycle, None, e.model_dump_json().encode()) for e in events]
        )
        await sender.stop()

    seen: list[int] = []

    async def on_event(event) -> None:
        seen.append(event.version)

    await broker.start()
    asked = Asked()
    follower = LifecycleFollower(
        broker.settings.kafka_bootstrap, topics.models_lifecycle, on_event, ask=asked
    )
    try:
        await publish(range(1, 21))
        await follower.start()
        assert seen == list(range(1, 21))
        assert asked.calls == [(["sea"], f"no champion at start-up on {topics.models_lifecycle}")]
        broker.kill()
        await broker.start()
        await publish(range(100, 103))  # offsets 0-2 of the new topic, behind the follower's 20
        deadline = time.monotonic() + 30
        while seen[-3:] != [100, 101, 102] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    finally:
        await follower.stop()
        broker.kill()
    assert seen[-3:] == [100, 101, 102], f"the follower missed the new topic's events: {seen[20:]}"
    assert asked.calls[-1] == (["sea"], f"topic lost on {topics.models_lifecycle}")


async def test_a_service_started_after_the_broker_lost_the_lifecycle_topic_gets_the_champion(
    redis_url, topics, tmp_path
):
    """The registry's store outlives the broker's topics: a follower that finds no champion asks
    (`AnnounceModel`), and the registry, reconnected to the new broker, publishes again the very
    event that made the champion."""
    from driftloop.artifacts import ArtifactStore
    from driftloop.contracts import ModelPromoted
    from driftloop.fastpath import BatchSender, Output
    from driftloop.kafka import encode
    from driftloop.lifecycle import LifecycleFollower, follow_models
    from driftloop_registry.app import create_app as registry_app
    from driftloop_registry.settings import RegistrySettings
    from tests.helpers import model_trained

    broker = OwnBroker(topics)
    await broker.start()
    bootstrap = broker.settings.kafka_bootstrap
    artifact = await ArtifactStore.at(tmp_path / "objects").put(b"an onnx model")
    registry = registry_app(RegistrySettings(
        kafka_bootstrap=bootstrap, redis_url=redis_url, topics=topics,
        object_store_url=str(tmp_path / "objects"), data_dir=tmp_path / "registry", http_port=0))  # fmt: skip
    before: list = []
    after: list = []

    async def seen_before(event) -> None:
        before.append(event)

    async def seen_after(event) -> None:
        after.append(event)

    watcher = LifecycleFollower(bootstrap, topics.models_lifecycle, seen_before)
    late = follow_models(broker.settings, seen_after, ["sea"])
    await registry.start()
    try:
        await watcher.start()
        trained = model_trained(artifact=artifact, names=("x0", "x1", "x2"), accuracy=0.9)
        sender = await BatchSender.connect(bootstrap, "test")
        await sender.send([Output(topics.models_trained, None, encode(trained))])
        await sender.stop()
        await wait_for(lambda: any(isinstance(e, ModelPromoted) for e in before), 30, "v1 promoted")
        await watcher.stop()

        broker.kill()
        await broker.start()  # models.lifecycle is empty now
        await late.start()  # finds no champion: asks the registry
        await wait_for(lambda: any(isinstance(e, ModelPromoted) for e in after), 60, "v1 announced again")
    finally:
        await late.stop()
        await registry.stop()
        broker.kill()
    assert after[0] == before[0], "the announcement differs from the event that made the champion"
    assert late.serving == {"sea"}
