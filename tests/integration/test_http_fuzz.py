"""Every HTTP endpoint of a real registry process (health, readiness, metrics, the registry API),
fuzzed from its OpenAPI document (`schemas/openapi/registry.yaml`) with schemathesis: no 5xx, and
every answer's status, content type and body as the document says; then hostile query strings
(path-like model names, control characters, huge values) answered with 400, never 5xx. The other
five services, as processes, fuzzed the same way on the endpoints every service serves."""

import asyncio
import os
import subprocess
import sys
import urllib.parse

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from bench.common import stop_processes, wait_ready
from driftloop.localstack import free_port
from driftloop.settings import Topics
from tests.conftest import ROOT
from tests.helpers import apply_models

SCHEMA = schemathesis.openapi.from_path(ROOT / "schemas" / "openapi" / "registry.yaml")
EVERY_SERVICE = SCHEMA.include(path_regex=r"^/(healthz|readyz|metrics)$")
OTHERS = ("ingest", "feature", "training", "inference", "monitor")


def _start(names, kafka_bootstrap, redis_server, tmp):
    """Service processes on free ports, each ready; (urls by name, processes)."""
    urls, procs = {}, []
    asyncio.run(apply_models(kafka_bootstrap, Topics()))
    for name in names:
        port = free_port()
        env = {
            **os.environ,
            "DRIFTLOOP_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "DRIFTLOOP_REDIS_URL": redis_server,
            "DRIFTLOOP_HTTP_PORT": str(port),
            "DRIFTLOOP_DATA_DIR": str(tmp / name),
            "DRIFTLOOP_OBJECT_STORE_URL": str(tmp / "objects"),
            "DRIFTLOOP_OFFLINE_DIR": str(tmp / "offline"),
            "DRIFTLOOP_TRAINING_DIR": str(tmp / "training"),
            "DRIFTLOOP_LOG_LEVEL": "WARNING",
        }
        procs.append(subprocess.Popen([sys.executable, "-m", f"driftloop_{name}.app"], env=env))
        urls[name] = f"http://127.0.0.1:{port}"
    try:
        for name, url in urls.items():
            wait_ready(int(url.rsplit(":", 1)[1]), name)
    except RuntimeError:
        stop_processes(procs)
        raise
    return urls, procs


@pytest.fixture(scope="module")
def registry(kafka_bootstrap, redis_server, tmp_path_factory):
    urls, procs = _start(["registry"], kafka_bootstrap, redis_server, tmp_path_factory.mktemp("registry"))
    try:
        yield urls["registry"]
    finally:
        stop_processes(procs)


@pytest.fixture(scope="module")
def others(kafka_bootstrap, redis_server, tmp_path_factory):
    urls, procs = _start(OTHERS, kafka_bootstrap, redis_server, tmp_path_factory.mktemp("others"))
    try:
        yield urls
    finally:
        stop_processes(procs)


@pytest.fixture(params=OTHERS)
def service(request, others):
    return others[request.param]


@SCHEMA.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_endpoint_answers_as_documented(case, registry):
    case.call_and_validate(base_url=registry)


@EVERY_SERVICE.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_service_answers_health_readiness_and_metrics_as_documented(case, service):
    case.call_and_validate(base_url=service)


HOSTILE = ["../../etc/passwd", "sea/../../x", "%00", "\x00\x1b[31m", "a" * 8_000, "sea:versions", "*", "ü"]


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_query_strings_get_400_not_5xx(registry, value):
    quoted = urllib.parse.quote(value, safe="")
    paths = [
        f"/v1/versions?model={quoted}",
        f"/v1/card?model={quoted}&version=1",
        f"/v1/card?model=sea&version={quoted}",
        f"/v1/card?model=sea&version=1&format={quoted}",
    ]
    for path in paths:
        response = httpx.get(f"{registry}{path}")
        assert response.status_code == 400, (path[:80], response.status_code, response.text[:200])
        assert "error" in response.json()
