"""Shared fixtures: a real Kafka-protocol broker (tansu), redis-server and S3 server on free ports."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from driftloop.localstack import (
    broker_command,
    create_bucket,
    free_port,
    redis_command,
    s3_command,
    wait_port,
)
from driftloop.settings import Topics
from driftloop.spec import ModelSpec, load_spec

ROOT = Path(__file__).resolve().parents[1]

# Properties are about correctness, not speed: a cold first example on a busy 2-core CI machine
# must not fail a test (timings live in the benchmarks).
settings.register_profile("driftloop", deadline=None)
settings.load_profile("driftloop")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(broker_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, 20, "broker")
    yield f"127.0.0.1:{port}"
    proc.kill()
    proc.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    command = redis_command(port, tmp_path_factory.mktemp("redis"), append_only=False)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, 20, "redis")
    yield f"redis://127.0.0.1:{port}/0"
    proc.kill()
    proc.wait()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3-protocol HTTP server (moto's): its endpoint."""
    port = free_port()
    proc = subprocess.Popen(s3_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, 30, "S3 server")
    yield f"http://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


@pytest.fixture
def s3_settings(s3_server: str) -> dict[str, object]:
    """Object store settings of a bucket of this test's own on the session's S3 server."""
    from tests.helpers import s3_settings_for

    bucket = f"t{uuid.uuid4().hex[:12]}"
    create_bucket(s3_server, bucket)
    return s3_settings_for(s3_server, bucket)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's redis-server, emptied for this test."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    client.close()
    return redis_server


@pytest.fixture
def topics() -> Topics:
    """Topic names unique to one test."""
    tag = uuid.uuid4().hex[:8]
    return Topics(**{k: f"t{tag}.{v}" for k, v in Topics().model_dump().items()})


@pytest.fixture(scope="session")
def sea_spec() -> ModelSpec:
    return load_spec(ROOT / "models" / "sea.yaml")


async def wait_for(condition, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll `condition()` until true, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
