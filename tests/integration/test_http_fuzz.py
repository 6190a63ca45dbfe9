"""Every HTTP endpoint of a real registry process (health, readiness, metrics, the registry API),
fuzzed from its OpenAPI document (`schemas/openapi/registry.yaml`) with schemathesis: no 5xx, and
every answer's status, content type and body as the document says; then hostile query strings
(path-like model names, control characters, huge values) answered with 400, never 5xx. The other
five services, as processes, fuzzed the same way on the endpoints every service serves; and the
inference service's v2 API (`schemas/openapi/inference.json`) with a champion in service."""

import asyncio
import os
import subprocess
import sys
import time
import urllib.parse
import uuid

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from bench.common import stop_processes, wait_ready
from driftloop.artifacts import ArtifactStore
from driftloop.connections import object_store
from driftloop.contracts import ModelPromoted
from driftloop.localstack import free_port
from driftloop.settings import ServiceSettings, Topics
from driftloop.spec import load_spec
from driftloop_inference.v2 import openapi
from tests.conftest import ROOT
from tests.helpers import Publisher, apply_models, sea_onnx

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


def _v2_schema():
    """The inference service's v2 document, its path parameters narrowed to a model in service (and
    one unknown) and versions 1 (served) and 2 (not): most requests then reach a model."""
    document = openapi()
    for item in document["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                names = ["sea", "unknown-model"] if parameter["name"] == "model" else ["1", "2"]
                parameter["schema"] = {"type": "string", "enum": names}
    return schemathesis.openapi.from_dict(document)


V2 = _v2_schema()


@pytest.fixture(scope="module")
def inference_v2(kafka_bootstrap, redis_server, tmp_path_factory):
    """An inference process serving SEA version 1, on topics of its own."""
    tmp = tmp_path_factory.mktemp("v2")
    tag = uuid.uuid4().hex[:8]
    topics = Topics(**{k: f"t{tag}.{v}" for k, v in Topics().model_dump().items()})
    models = tmp / "models"
    models.mkdir()
    (models / "sea.yaml").write_text((ROOT / "models" / "sea.yaml").read_text())
    objects = str(tmp / "objects")

    async def promote():
        await apply_models(kafka_bootstrap, topics, models)
        onnx, classes, names = sea_onnx(load_spec(models / "sea.yaml"))
        artifact = await ArtifactStore(object_store(ServiceSettings(object_store_url=objects))).put(onnx)
        async with Publisher(kafka_bootstrap) as bus:
            event = ModelPromoted(model="sea", version=1, artifact=artifact, classes=classes,
                                  feature_names=names, reason="fuzz")  # fmt: skip
            await bus.publish(topics.models_lifecycle, [event])

    asyncio.run(promote())
    port = free_port()
    env = {
        **os.environ,
        **{f"DRIFTLOOP_TOPICS__{k.upper()}": v for k, v in topics.model_dump().items()},
        "DRIFTLOOP_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "DRIFTLOOP_GROUP_ID": f"inference-{tag}",  # a group of its own: never a stale member of another's
        "DRIFTLOOP_REDIS_URL": redis_server,
        "DRIFTLOOP_HTTP_PORT": str(port),
        "DRIFTLOOP_DATA_DIR": str(tmp / "inference"),
        "DRIFTLOOP_OBJECT_STORE_URL": objects,
        "DRIFTLOOP_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen([sys.executable, "-m", "driftloop_inference.app"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(port, "inference")
        for _ in range(600):
            if httpx.get(f"{url}/v2/models/sea/ready").status_code == 200:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the champion was not loaded within 60 s")
        yield url
    finally:
        stop_processes([proc])


@V2.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_v2_api_answers_as_documented(case, inference_v2):
    # a request the document allows may still not fit the model (its inputs are the spec's
    # features, which one document for every model cannot list): a 400 then, not a 2xx
    case.call_and_validate(base_url=inference_v2, excluded_checks=[positive_data_acceptance])
