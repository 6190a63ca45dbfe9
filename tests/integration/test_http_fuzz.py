"""Every HTTP endpoint of a real registry process (health, readiness, metrics, the registry API),
fuzzed from its OpenAPI document (`schemas/openapi/registry.yaml`) with schemathesis: no 5xx, and
every answer's status, content type and body as the document says; then hostile query strings
(path-like model names, control characters, huge values) answered with 400, never 5xx."""

import os
import subprocess
import sys
import time
import urllib.parse

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from driftloop.localstack import free_port, wait_port
from tests.conftest import ROOT

SCHEMA = schemathesis.openapi.from_path(ROOT / "schemas" / "openapi" / "registry.yaml")


@pytest.fixture(scope="module")
def registry(kafka_bootstrap, redis_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("registry")
    port = free_port()
    env = {**os.environ, "DRIFTLOOP_KAFKA_BOOTSTRAP": kafka_bootstrap, "DRIFTLOOP_REDIS_URL": redis_server,
           "DRIFTLOOP_HTTP_PORT": str(port), "DRIFTLOOP_MODELS_DIR": str(ROOT / "models"),
           "DRIFTLOOP_DATA_DIR": str(tmp / "data"), "DRIFTLOOP_ARTIFACTS_DIR": str(tmp / "artifacts"),
           "DRIFTLOOP_LOG_LEVEL": "WARNING"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "driftloop_registry.app"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_port(port, 30, "registry")
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the registry never became ready"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


@SCHEMA.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_endpoint_answers_as_documented(case, registry):
    case.call_and_validate(base_url=registry)


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
