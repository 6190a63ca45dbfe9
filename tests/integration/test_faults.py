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
from tests.conftest import ROOT

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
        "DRIFTLOOP_MODELS_DIR": str(ROOT / "models"),
        "DRIFTLOOP_OFFLINE_DIR": str(tmp_path / "offline"),
        **{f"DRIFTLOOP_TOPICS__{k.upper()}": v for k, v in topics.model_dump().items()},
    }
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
