"""Hostile input against the whole local stack (broker, Redis, Prometheus and the six services as
processes) with a SEA champion: the single inputs that each stopped a service, then generated
records of every kind on every consumed topic, then an outage. Each bad record is dead-lettered
with its reason within seconds, every other record is answered, no metric moves twice, and
`/readyz` reflects a stall while it lasts."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from typing import Any

import httpx
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaProducer, ConsumerRecord
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from driftloop import datasets, localstack
from driftloop.client import PredictionClient
from driftloop.contracts import (
    REGISTRY_COMMAND,
    DeadLetter,
    FeatureRow,
    Feedback,
    InvalidInput,
    ModelSpecApplied,
    ModelTrained,
    Observation,
    PredictionRequest,
    PredictionResult,
    TrainModel,
    parse,
)
from driftloop.kafka import tail_from_end
from driftloop.online import online_key
from driftloop.settings import Topics
from driftloop.spec import load_specs
from driftloop_inference.handlers import _salvage_id
from tests.conftest import ROOT, wait_for
from tests.helpers import JSON, metric, served_versions

TOPICS = Topics()
SPECS = load_specs(ROOT / "models")
FAR = 300_000_000_000_000  # a record timestamp in ms: the year 11476
GOOD = {"x0": 9.0, "x1": 9.0, "x2": 1.0}
STALL_AFTER_S = 3


class Tail:
    """Every record produced to a topic from now on, read in the background."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.records: list[ConsumerRecord] = []

    async def __aenter__(self) -> Tail:
        self._consumer = await tail_from_end(self.bootstrap, self.topic)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._consumer.stop()

    async def _read(self) -> None:
        while True:
            for records in (await self._consumer.getmany(timeout_ms=200)).values():
                self.records += records

    def parsed(self, kind: Any) -> list[Any]:
        """The records that are `kind` (a test may write hostile ones to the same topic)."""
        out = []
        for record in self.records:
            with contextlib.suppress(ValueError):
                out.append(kind.model_validate_json(record.value or b""))
        return out


def stack_models(stack: localstack.Stack) -> Any:
    return stack.run_dir.parent / "models"


def driftloop(stack: localstack.Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, against this stack."""
    command = [sys.executable, "-m", "driftloop.cli", *args, "--run-dir", str(stack.run_dir),
               "--models-dir", str(stack_models(stack))]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def readiness(stack: localstack.Stack, service: str) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{stack.url(service)}/readyz", timeout=5)
    return response.status_code, response.json()


def caught_up(stack: localstack.Stack) -> bool:
    """Every consumer of every service has committed everything and nothing fails."""
    for service in localstack.SERVICES:
        status, body = readiness(stack, service)
        if status != 200 or any(c["lag"] or c["failures"] for c in body["consumers"]):
            return False
    return True


async def labels_counted_once(stack: localstack.Stack, before: float, labels: int) -> None:
    """The monitor counts `labels` more labels, and no more once every consumer has committed."""
    labelled = "driftloop_monitor_labelled_total"
    await wait_for(
        lambda: metric(stack, "monitor", labelled) >= before + labels, 30, f"{labels} labels counted"
    )
    await wait_for(lambda: caught_up(stack), 30, "every consumer to commit (and count) everything")
    assert metric(stack, "monitor", labelled) == before + labels


@pytest.fixture(scope="module")
async def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    models = root / "models"
    models.mkdir()
    (models / "sea.yaml").write_text((ROOT / "models" / "sea.yaml").read_text())
    # a model without any rows yet, whose training waits one second for them
    thin = (ROOT / "models" / "sea.yaml").read_text().replace("name: sea", "name: thin")
    (models / "thin.yaml").write_text(thin.replace("wait_for_rows_s: 120", "wait_for_rows_s: 1"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DRIFTLOOP_STALL_AFTER_S", str(STALL_AFTER_S))
        running = await asyncio.to_thread(localstack.up, root / "run", models)
    try:
        await _forged_spec(running)
        await _champion(running)
        yield running
    finally:
        await asyncio.to_thread(localstack.down, root / "run")


BAD_SPEC_KEY = f"bad@{'0' * 16}"


async def _forged_spec(stack: localstack.Stack) -> None:
    """5. A spec published past `driftloop apply` (which refuses it): its detector has no such
    parameter. Every service refuses it and keeps the others."""
    bad = yaml.safe_load((ROOT / "models" / "sea.yaml").read_text().replace("name: sea", "name: bad"))
    bad["drift"]["params"] = {"threshold": 50}
    forged = ModelSpecApplied(model="bad", version="0" * 16, spec=bad)
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(TOPICS.models_specs, forged.model_dump_json().encode(),
                                     key=BAD_SPEC_KEY.encode())  # fmt: skip
    finally:
        await producer.stop()
    await wait_for(
        lambda: all(metric(stack, s, "driftloop_specs_refused") == 1 for s in localstack.SERVICES),
        15, "every service to refuse the forged spec",
    )  # fmt: skip


async def _champion(stack: localstack.Stack) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, enable_idempotence=False, linger_ms=5)
    await producer.start()
    try:
        for i, (x, y) in enumerate(itertools.islice(datasets.sea(0, seed=3), 2500)):
            await producer.send(TOPICS.events_raw, orjson.dumps(
                {"event_id": f"boot{i}", "model": "sea", "features": x, "label": y}))  # fmt: skip
        command = TrainModel(command_id=uuid.uuid4().hex, model="sea", reason="test", min_rows=2000)
        await producer.send_and_wait(TOPICS.training_requests, command.model_dump_json().encode())
    finally:
        await producer.stop()
    async with PredictionClient(stack.bootstrap, timeout_s=10) as client:
        assert await served_versions(client, "sea", [GOOD], {1}, timeout=120) == {1}


@contextlib.asynccontextmanager
async def _producer(stack: localstack.Stack):
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


def _answered(value: bytes, answered: set[str]) -> bool:
    """Whether inference answered a request it could not read with an error result instead."""
    salvaged = _salvage_id(value)
    return salvaged is not None and salvaged[0] in answered


def _letters(dlq: Tail) -> list[DeadLetter]:
    return dlq.parsed(DeadLetter)


def _lettered(dlq: Tail) -> set[tuple[str, str, int, int]]:
    """(service, source topic, partition, offset) of every dead letter read so far."""
    return {(d.service, d.source_topic, d.source_partition, d.source_offset) for d in _letters(dlq)}


@pytest.mark.slow
async def test_each_input_that_stopped_a_service_is_dead_lettered_and_the_stack_keeps_answering(stack):
    tag = uuid.uuid4().hex[:8]
    entity = f"hand-edited-{tag}"
    labelled_before = metric(stack, "monitor", "driftloop_monitor_labelled_total")
    async with (
        Tail(stack.bootstrap, TOPICS.events_dlq) as dlq,
        Tail(stack.bootstrap, TOPICS.features_computed) as rows,
        _producer(stack) as producer,
        PredictionClient(stack.bootstrap, timeout_s=20) as client,
    ):
        # 1. a request id that is a lone surrogate
        surrogate = await producer.send_and_wait(
            TOPICS.predictions_requests, b'{"request_id": "\\ud800", "model": "sea", "features": {}}'
        )
        # 2. an observation without event_time whose record timestamp no date holds
        far_event = {"event_id": f"far-{tag}", "model": "sea", "features": GOOD, "label": 1}
        far_observation = await producer.send_and_wait(
            TOPICS.events_raw, orjson.dumps(far_event), timestamp_ms=FAR
        )
        # 3. a request with such a timestamp, and its label
        far_request = await producer.send_and_wait(
            TOPICS.predictions_requests,
            orjson.dumps({"request_id": f"far-{tag}", "model": "sea", "features": GOOD}),
            timestamp_ms=FAR,
        )
        await producer.send_and_wait(
            TOPICS.predictions_feedback,
            orjson.dumps({"request_id": f"far-{tag}", "model": "sea", "label": 1}),
        )
        # 4. an entity's online-store hash edited by hand: event_ts is not a number
        redis = Redis.from_url(stack.redis_url)
        try:
            await redis.hset(online_key("sea", entity), mapping={"event_ts": "yesterday", "features": "{"})
        finally:
            await redis.aclose()
        event = {"event_id": f"edited-{tag}", "model": "sea", "entity_id": entity, "features": GOOD,
                 "label": 1, "event_time": "2026-11-30T10:00:00+00:00"}  # fmt: skip
        await producer.send_and_wait(TOPICS.events_raw, orjson.dumps(event), key=entity.encode())

        # 5. the refused spec's model is unknown to the platform: a command for it is refused
        train_bad = TrainModel(command_id=f"bad-{tag}", model="bad", reason="test")
        bad_command = await producer.send_and_wait(
            TOPICS.training_requests, train_bad.model_dump_json().encode()
        )
        for service in localstack.SERVICES:
            status, body = readiness(stack, service)
            assert status == 200 and list(body["refused_specs"]) == [BAD_SPEC_KEY], body
            assert "threshold" in body["refused_specs"][BAD_SPEC_KEY]
            assert set(body["specs"]) == {"sea", "thin"}
            assert metric(stack, service, "driftloop_specs_refused") == 1

        # ordinary traffic is answered, and labelled once each
        ordinary = await client.predict_many("sea", [GOOD] * 15)
        assert [(r.error, r.model_version) for r in ordinary] == [(None, 1)] * 15
        for result in ordinary:
            feedback = {"request_id": result.request_id, "model": "sea", "label": 1}
            await producer.send(TOPICS.predictions_feedback, orjson.dumps(feedback))
        await producer.flush()
        await wait_for(lambda: any(r.value and f"edited-{tag}".encode() in r.value for r in rows.records), 30,
                    "the hand-edited entity's feature row")  # fmt: skip
        served = await client.predict("sea", {}, entity_id=entity)
        assert served.error is None and served.model_version == 1, served

        requests = TOPICS.predictions_requests
        expected = {
            ("inference", "malformed_json", requests, surrogate.partition, surrogate.offset),
            ("monitor", "malformed_json", requests, surrogate.partition, surrogate.offset),
            ("ingest", "event_time_out_of_range", TOPICS.events_raw, far_observation.partition,
             far_observation.offset),
            ("monitor", "timestamp_out_of_range", TOPICS.predictions_requests, far_request.partition,
             far_request.offset),
            ("training", "unknown_model", TOPICS.training_requests, bad_command.partition,
             bad_command.offset),
        }  # fmt: skip

        def found() -> set[tuple]:
            return {
                (d.service, d.reason, d.source_topic, d.source_partition, d.source_offset)
                for d in _letters(dlq)
            }

        await wait_for(lambda: expected <= found(), 20, "the five dead letters")
        await labels_counted_once(stack, labelled_before, 15)
        assert found() == expected, "other records were dead-lettered"
        assert [d for d in _letters(dlq) if d.reason == "processing_failed"] == []
    await wait_for(lambda: caught_up(stack), 30, "every consumer to catch up")


@pytest.mark.slow
async def test_the_cli_reports_what_training_did(stack):
    """`driftloop train` follows its command through the platform and says how it ended."""
    waited = await asyncio.to_thread(driftloop, stack, "train", "thin")
    assert waited.returncode == 1, waited
    assert "waiting for rows: 0 of 500 (at most 1 s)" in waited.stdout
    assert waited.stderr.strip().startswith("driftloop: ModelTrainingFailed thin v0: insufficient_data"), (
        waited
    )
    trained = await asyncio.to_thread(driftloop, stack, "train", "sea", "--last-n", "2000")
    outcome = (trained.stdout + trained.stderr).strip().splitlines()[-1]
    # a candidate on the newest rows: it beats the champion on their holdout or it does not
    expected = (
        r"ModelPromoted sea v\d+: manual: " if trained.returncode == 0 else r"driftloop: ModelRejected sea v"
    )
    assert trained.returncode in (0, 1) and re.match(expected, outcome), trained
    unknown = await asyncio.to_thread(driftloop, stack, "train", "bad")
    assert unknown.returncode == 2 and "no model 'bad'" in unknown.stderr


# ---------------------------------------------------------------------------- generated records

# topic -> (the contract its consumers read, its consumers, a good record to spoil, spoil fields?)
CONSUMED: dict[str, tuple[Any, tuple[str, ...], dict | None]] = {
    TOPICS.events_raw: (Observation, ("ingest",), {"event_id": "e", "model": "sea", "features": GOOD}),
    TOPICS.events_validated: (Observation, ("feature",), {"event_id": "e", "model": "sea", "features": GOOD,
                              "event_time": "2026-11-30T10:00:00+00:00"}),
    TOPICS.features_computed: (FeatureRow, ("training",), {"event_id": "e", "model": "sea", "features": GOOD,
                               "event_time": "2026-11-30T10:00:00+00:00"}),
    TOPICS.predictions_requests: (PredictionRequest, ("inference", "monitor"),
                                  {"request_id": "r", "model": "sea", "features": GOOD}),
    TOPICS.predictions_results: (PredictionResult, ("monitor",),
                                 {"request_id": "r", "model": "sea", "model_version": 1, "prediction": 1}),
    TOPICS.predictions_feedback: (Feedback, ("monitor",), {"request_id": "r", "model": "sea", "label": 1}),
    # commands: only records that cannot be read (a readable one would train or promote)
    TOPICS.training_requests: (TrainModel, ("training",), None),
    TOPICS.models_commands: (REGISTRY_COMMAND, ("registry",), None),
    TOPICS.models_trained: (ModelTrained, ("registry",), None),
}  # fmt: skip
HOSTILE_VALUES = st.sampled_from(
    ["\x00\x1b[31m\u202e", "x" * 300, "NaN", 2**80, 1e308, [], {}, None, True, {"$ne": 1}, "../../etc"]
)
TIMESTAMPS = st.sampled_from([None, 0, 1, FAR, 2**62, 1_764_000_000_000])
HEADERS = st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=16)), max_size=3)


@st.composite
def hostile(draw, good: dict | None) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "field", "missing"] if good else ["bytes", "json"]))
    if kind == "bytes":
        return draw(st.binary(min_size=1, max_size=120))
    if kind == "json" or good is None:
        return orjson.dumps(draw(JSON))
    ids = {"event_id", "request_id"} & set(good)  # unique: a hostile join must not complete
    record = {**good, **{name: uuid.uuid4().hex for name in ids}}
    name = draw(st.sampled_from(sorted(set(good) - ids)))
    if kind == "missing":
        record.pop(name)
    else:
        record[name] = draw(HOSTILE_VALUES)
    return json.dumps(record).encode()


def readable(topic: str, value: bytes) -> bool:
    """Whether a record is its topic's contract at all (its consumers may still refuse it, e.g. for
    a model they have no spec for): one that is not must be dead-lettered by every consumer."""
    try:
        parse(CONSUMED[topic][0], value)
    except InvalidInput:
        return False
    return True


@pytest.mark.slow
# no shrinking: each example waits on the stack, and a failure prints the records it sent
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck), database=None,
          phases=[Phase.explicit, Phase.generate])  # fmt: skip
@given(data=st.data())
async def test_generated_hostile_records_on_every_topic_never_stop_a_consumer(stack, data):
    tag = uuid.uuid4().hex[:8]
    dead_before = {s: metric(stack, s, "driftloop_dead_letters_total") for s in localstack.SERVICES}
    labelled_before = metric(stack, "monitor", "driftloop_monitor_labelled_total")
    sent: list[tuple[str, int, int, bytes]] = []  # topic, partition, offset, value
    async with (
        Tail(stack.bootstrap, TOPICS.events_dlq) as dlq,
        Tail(stack.bootstrap, TOPICS.predictions_results) as results,
        Tail(stack.bootstrap, TOPICS.features_computed) as rows,
        _producer(stack) as producer,
    ):
        for topic, (_, _, good) in CONSUMED.items():
            for value in data.draw(st.lists(hostile(good), min_size=3, max_size=12), label=topic):
                key = data.draw(st.none() | st.binary(max_size=12))
                metadata = await producer.send_and_wait(
                    topic, value, key=key, headers=data.draw(HEADERS), timestamp_ms=data.draw(TIMESTAMPS)
                )
                sent.append((topic, metadata.partition, metadata.offset, value))
        # then good records on every partition of the data topics: each must be answered
        requests, events = [], []
        for partition in range(3):
            request_id, event_id = f"good-{tag}-{partition}", f"good-{tag}-{partition}"
            request = {"request_id": request_id, "model": "sea", "features": GOOD}
            await producer.send(TOPICS.predictions_requests, orjson.dumps(request), partition=partition)
            observation = {"event_id": event_id, "model": "sea", "features": GOOD, "label": 1,
                           "event_time": "2026-11-30T10:00:00+00:00"}  # fmt: skip
            await producer.send(TOPICS.events_raw, orjson.dumps(observation), partition=partition)
            validated = {**observation, "event_id": event_id + "v"}
            await producer.send(TOPICS.events_validated, orjson.dumps(validated), partition=partition)
            requests.append(request_id)
            events += [event_id, event_id + "v"]
        await producer.flush()
        await wait_for(lambda: {r.request_id for r in results.parsed(PredictionResult)} >= set(requests), 30,
                    "every partition's good request answered")  # fmt: skip
        for request_id in requests:
            feedback = {"request_id": request_id, "model": "sea", "label": 1}
            await producer.send(TOPICS.predictions_feedback, orjson.dumps(feedback))
        await producer.flush()
        await wait_for(lambda: {r.event_id for r in rows.parsed(FeatureRow)} >= set(events), 30,
                    "every partition's good observation computed")  # fmt: skip
        await wait_for(lambda: caught_up(stack), 60, "every consumer to commit everything")

        # every record its consumers cannot read is dead-lettered by each of them (inference
        # answers one whose request id it can still read with an error result instead). A letter
        # is published before its source is committed, but the tails read the topics on their own
        # clock: wait until they have read what the broker holds.
        def unanswered() -> list[tuple[str, str, bytes]]:
            lettered = _lettered(dlq)
            answered = {r.request_id for r in results.parsed(PredictionResult) if r.error}
            return [
                (service, topic, value)
                for topic, partition, offset, value in sent
                if not readable(topic, value)
                for service in CONSUMED[topic][1]
                if (service, topic, partition, offset) not in lettered
                and not (service == "inference" and _answered(value, answered))
            ]

        with contextlib.suppress(AssertionError):  # the assertion below says which
            await wait_for(lambda: not unanswered(), 30, "every unreadable record dead-lettered")
        assert unanswered() == [], "records neither dead-lettered nor answered"
        letters = _letters(dlq)
        assert [d for d in letters if d.reason == "processing_failed"] == [], "a handler failed on a record"
        # no metric moved twice: dead letters counted once each, the three labels once each
        await labels_counted_once(stack, labelled_before, 3)
        # (a batch sent again after a failed send repeats its dead letters on the topic: at least
        # once; the metric counts each record once. A reader placed at the end of a tansu topic
        # reads part of its last batch again: only this example's records count.)
        ours = {(topic, partition, offset) for topic, partition, offset, _ in sent}

        def on_topic() -> dict[str, int]:
            distinct = {letter for letter in _lettered(dlq) if letter[1:] in ours}
            return {s: sum(1 for d in distinct if d[0] == s) for s in localstack.SERVICES}

        def counted() -> dict[str, float]:
            dead = "driftloop_dead_letters_total"
            return {s: metric(stack, s, dead) - dead_before[s] for s in localstack.SERVICES}

        with contextlib.suppress(AssertionError):  # the assertion below says which
            await wait_for(lambda: counted() == on_topic(), 30, "the letters read to match the metric")
        assert counted() == on_topic(), sorted(letter for letter in _lettered(dlq) if letter[1:] in ours)


# ---------------------------------------------------------------------------- a visible stall


@pytest.mark.slow
async def test_a_stall_shows_in_readiness_while_it_lasts_and_nothing_is_lost(stack, tmp_path):
    tag = uuid.uuid4().hex[:8]
    events = [f"stall-{tag}-{p}" for p in range(3)]
    os.kill(stack.pids["redis"], signal.SIGKILL)  # the online store goes away
    try:
        async with Tail(stack.bootstrap, TOPICS.features_computed) as rows, _producer(stack) as producer:
            for partition, event_id in enumerate(events):
                observation = {"event_id": event_id, "model": "sea", "entity_id": event_id, "features": GOOD,
                               "label": 1, "event_time": "2026-11-30T10:00:00+00:00"}  # fmt: skip
                await producer.send(TOPICS.events_validated, orjson.dumps(observation), partition=partition)
            await producer.flush()

            await wait_for(
                lambda: readiness(stack, "feature")[0] == 503, STALL_AFTER_S + 15, "feature not ready"
            )
            _, body = readiness(stack, "feature")
            assert any("no commit for" in why for why in body["stalled"]), body
            (consumer,) = body["consumers"]
            assert consumer["failures"] > 0 and "Connection" in (consumer["last_error"] or ""), consumer
            assert metric(stack, "feature", "driftloop_consumer_stalled_seconds") >= STALL_AFTER_S
            status = await asyncio.to_thread(driftloop, stack, "status")
            feature = [line for line in status.stdout.splitlines() if "events.validated: lag" in line]
            assert feature and "failing" in feature[0] and "Connection" in feature[0], status.stdout
            copies = [r.event_id for r in rows.parsed(FeatureRow)]
            assert all(copies.count(e) <= 1 for e in events), "rows sent again on every retry"

            await asyncio.to_thread(localstack.respawn, stack, "redis", tmp_path)
            await wait_for(lambda: readiness(stack, "feature")[0] == 200, 30, "feature ready again")
            await wait_for(lambda: {r.event_id for r in rows.parsed(FeatureRow)} >= set(events), 30,
                        "the waiting observations computed")  # fmt: skip
            assert metric(stack, "feature", "driftloop_consumer_stalled_seconds") == 0
    finally:
        if not localstack.alive(stack.pids["redis"]):
            await asyncio.to_thread(localstack.respawn, stack, "redis", tmp_path)
