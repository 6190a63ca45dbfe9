"""The Open Inference Protocol (v2) over HTTP, against a running inference service (a real broker,
redis-server and object store; uvicorn on a free port), called with a client no one here wrote:
Triton's `tritonclient.http` (its blocking client in a thread, its asyncio client for load).
Numeric and BYTES inputs, as JSON and as binary tensor data; errors as the protocol has them; a
swap under HTTP load; the log of HTTP predictions on the topics; auth, body limits and a drain at
shutdown."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import uuid

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
import uvicorn
from prometheus_client import REGISTRY
from tritonclient.utils import InferenceServerException

from driftloop import datasets
from driftloop.artifacts import ArtifactStore
from driftloop.client import HttpPredictionClient
from driftloop.connections import object_store
from driftloop.contracts import ModelAwaitingApproval, ModelPromoted, PredictionResult
from driftloop.features import FeatureSet, check_features
from driftloop.fitting import reference_stats
from driftloop.localstack import free_port
from driftloop.settings import ServiceSettings
from driftloop.spec import load_spec
from driftloop_inference.app import create_app as inference_app
from driftloop_inference.domain import to_canary
from driftloop_inference.handlers import LOGGED
from driftloop_inference.settings import InferenceSettings
from driftloop_inference.v2 import ASKABLE
from tests.conftest import ROOT, wait_for
from tests.helpers import Publisher, apply_models, by_request_id, fitted_onnx, sea_onnx, sea_rows
from tests.oracles import matrix

SEA = load_spec(ROOT / "models" / "sea.yaml")
AGRAWAL = load_spec(ROOT / "models" / "agrawal.yaml")
MODELS = ("sea", "agrawal")
AGRAWAL_ROWS = list(itertools.islice(datasets.conform(AGRAWAL, datasets.synthetic("agrawal", 0, 1)), 800))


class Served:
    """SEA (versions 1 and 2 stored, 1 promoted) and Agrawal (1 promoted) in a running service;
    `stagger` has a spec and no version."""

    def __init__(self, bootstrap, redis_url, topics, tmp_path, sea_serving="", **settings):
        models = tmp_path / "models"
        models.mkdir(parents=True, exist_ok=True)
        for name in ("sea", "agrawal", "stagger"):
            text = (ROOT / "models" / f"{name}.yaml").read_text()
            (models / f"{name}.yaml").write_text(text + sea_serving if name == "sea" else text)
        objects = {"object_store_url": str(tmp_path / "objects")}
        self.store = ArtifactStore(object_store(ServiceSettings(**objects)))
        self.models = {
            ("sea", 1): sea_onnx(SEA),
            ("sea", 2): sea_onnx(SEA, variant=3),
            ("agrawal", 1): fitted_onnx(AGRAWAL, AGRAWAL_ROWS, "hist_gradient_boosting"),
        }
        self.settings = InferenceSettings(
            kafka_bootstrap=bootstrap, redis_url=redis_url, topics=topics, data_dir=tmp_path / "inference",
            group_id=f"inference-{uuid.uuid4().hex[:8]}", http_port=free_port(), **objects, **settings,
        )  # fmt: skip
        self.bootstrap, self.topics, self.models_dir = bootstrap, topics, models
        self.url = f"127.0.0.1:{self.settings.http_port}"
        self.events: dict = {}
        self.server: uvicorn.Server | None = None

    async def __aenter__(self):
        await apply_models(self.bootstrap, self.topics, self.models_dir)
        training = {"sea": [x for x, _ in sea_rows(600)], "agrawal": [x for x, _ in AGRAWAL_ROWS]}
        for (model, version), (onnx, classes, names) in self.models.items():
            artifact = await self.store.put(onnx)
            spec = SEA if model == "sea" else AGRAWAL
            X = matrix(FeatureSet(spec), [check_features(spec, x) for x in training[model]])
            self.events[model, version] = ModelPromoted(
                model=model,
                version=version,
                artifact=artifact,
                classes=classes,
                feature_names=names,
                reason="t",
                reference_stats=reference_stats(X, names),  # what explanations replace inputs by
            )
        self.bus = Publisher(self.bootstrap)
        await self.bus.start()
        await self.promote(("sea", 1), ("agrawal", 1))
        config = uvicorn.Config(inference_app(self.settings), host="127.0.0.1", port=self.settings.http_port,
                                lifespan="on", log_level="warning", timeout_graceful_shutdown=10)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.serving = asyncio.create_task(self.server.serve())
        await wait_for(lambda: self.server.started, 60, "uvicorn started")
        async with httpx.AsyncClient(base_url=f"http://{self.url}") as client:
            for _ in range(600):  # both champions loaded
                answers = [await client.get(f"/v2/models/{m}/ready", headers=self.auth) for m in MODELS]
                if all(a.status_code == 200 for a in answers):
                    return self
                await asyncio.sleep(0.1)
        raise AssertionError("the champions were not loaded within 60 s")

    @property
    def auth(self):
        token = self.settings.http_token
        return {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}

    async def promote(self, *which):
        await self.bus.publish(self.topics.models_lifecycle, [self.events[w] for w in which])

    async def stop(self):
        if self.server is not None and not self.serving.done():
            self.server.should_exit = True
            await self.serving

    async def __aexit__(self, *exc):
        await self.stop()
        await self.bus.stop()

    async def call(self, method, *args, **kwargs):
        """A blocking `tritonclient.http` call, in a thread (it runs its own gevent hub)."""

        def run():
            client = triton.InferenceServerClient(self.url)
            try:
                return getattr(client, method)(*args, **kwargs)
            finally:
                client.close()

        return await asyncio.to_thread(run)


def sea_inputs(rows, binary=True, dtype=np.float32):
    inputs = []
    for name in ("x0", "x1", "x2"):
        tensor = triton.InferInput(name, [len(rows)], "FP32" if dtype == np.float32 else "FP64")
        tensor.set_data_from_numpy(np.array([r[name] for r in rows], dtype=dtype), binary_data=binary)
        inputs.append(tensor)
    return inputs


def agrawal_inputs(rows, binary=True, categorical_as_int=False):
    inputs = []
    for feature in AGRAWAL.features:
        values = [r[feature.name] for r in rows]
        if feature.type == "numeric":
            tensor = triton.InferInput(feature.name, [len(rows)], "FP64")
            tensor.set_data_from_numpy(np.array(values, dtype=np.float64), binary_data=binary)
        elif categorical_as_int:
            tensor = triton.InferInput(feature.name, [len(rows), 1], "INT64")
            tensor.set_data_from_numpy(np.array(values, dtype=np.int64).reshape(-1, 1), binary_data=binary)
        else:
            tensor = triton.InferInput(feature.name, [len(rows)], "BYTES")
            encoded = np.array([v.encode() for v in values], dtype=np.object_)
            tensor.set_data_from_numpy(encoded, binary_data=binary)
        inputs.append(tensor)
    return inputs


async def results_of(bootstrap, topic, ids, timeout=30.0, settle_s=1.0):
    """{request_id: [(message, headers)]} for `ids` on the topic (a second answer would show)."""
    return await by_request_id(bootstrap, topic, ids, timeout, settle_s)


async def test_a_triton_client_reads_health_metadata_and_readiness(
    kafka_bootstrap, redis_url, topics, tmp_path
):
    async with Served(kafka_bootstrap, redis_url, topics, tmp_path) as s:
        assert await s.call("is_server_live") and await s.call("is_server_ready")
        assert await s.call("is_model_ready", "sea") and await s.call("is_model_ready", "sea", "1")
        assert not await s.call("is_model_ready", "stagger"), "no version yet"
        assert not await s.call("is_model_ready", "sea", "2"), "stored, never promoted"
        assert not await s.call("is_model_ready", "nosuch")
        about = await s.call("get_model_metadata", "agrawal")
        assert about["name"] == "agrawal" and about["versions"] == ["1"]
        kinds = {t["name"]: t["datatype"] for t in about["inputs"]}
        assert kinds == {**{f.name: "BYTES" if f.type == "categorical" else "FP64" for f in AGRAWAL.features},
                         "entity_id": "BYTES"}  # fmt: skip
        assert [t["name"] for t in about["outputs"]] == list(ASKABLE)
        assert (await s.call("get_server_metadata"))["extensions"] == ["binary_tensor_data"]
        for missing in (("nosuch",), ("sea", "7")):
            with pytest.raises(InferenceServerException) as refused:
                await s.call("get_model_metadata", *missing)
            assert refused.value.status() == "404"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_the_v2_answers_are_the_kafka_paths(kafka_bootstrap, redis_url, topics, tmp_path, binary):
    """Numeric (FP32) and categorical (BYTES, and INT64 codes) inputs: every row answered by
    version 1, with the probabilities the Kafka path gives the same rows."""
    async with Served(kafka_bootstrap, redis_url, topics, tmp_path) as s:
        rows = [x for x, _ in sea_rows(50, seed=7)]
        answer = await s.call("infer", "sea", sea_inputs(rows, binary), request_id="sea-batch")
        ids = [i.decode() if isinstance(i, bytes) else i for i in answer.as_numpy("request_id").tolist()]
        assert ids == [f"sea-batch-{i}" for i in range(50)]
        assert answer.get_response()["model_version"] == "1" and set(answer.as_numpy("model_version")) == {1}
        proba = answer.as_numpy("predict_proba")
        assert proba.shape == (50, 2) and np.allclose(proba.sum(axis=1), 1.0)
        assert (answer.as_numpy("predict") == proba.argmax(axis=1)).all()

        by_kafka = await kafka_answers(s, "sea", rows)
        assert np.allclose(proba, [[r.probabilities["0"], r.probabilities["1"]] for r in by_kafka], atol=1e-5)

        # explanations are asked for as an output, and are the Kafka path's (FP64 rows: the same input)
        asked = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("predict", "explanation")]
        explained = await s.call("infer", "sea", sea_inputs(rows[:5], binary, np.float64), outputs=asked)
        by_http = [orjson.loads(e) for e in explained.as_numpy("explanation").tolist()]
        by_kafka = await kafka_answers(s, "sea", rows[:5], explain=True)
        assert [set(e) for e in by_http] == [{"x0", "x1", "x2"}] * 5
        for http_row, kafka_row in zip(by_http, by_kafka, strict=True):
            assert kafka_row.explanation is not None
            assert http_row == pytest.approx(kafka_row.explanation, abs=1e-6)

        rows = [x for x, _ in AGRAWAL_ROWS[:40]]
        as_bytes = await s.call("infer", "agrawal", agrawal_inputs(rows, binary))
        as_codes = await s.call("infer", "agrawal", agrawal_inputs(rows, binary, categorical_as_int=True))
        by_kafka = await kafka_answers(s, "agrawal", rows)
        expected = [[r.probabilities["0"], r.probabilities["1"]] for r in by_kafka]
        assert np.allclose(as_bytes.as_numpy("predict_proba"), expected, atol=1e-6)
        assert np.allclose(as_codes.as_numpy("predict_proba"), expected, atol=1e-6)


async def kafka_answers(s, model, rows, explain=False):
    """The Kafka path's answers to `rows` (its results, in row order)."""
    ids = [f"k-{uuid.uuid4().hex[:8]}-{i}" for i in range(len(rows))]
    for request_id, row in zip(ids, rows, strict=True):
        body = orjson.dumps({"request_id": request_id, "model": model, "features": row, "explain": explain})
        await s.bus.producer.send(s.topics.predictions_requests, body, key=request_id.encode())
    await s.bus.producer.flush()
    found = await results_of(s.bootstrap, s.topics.predictions_results, ids)
    return [PredictionResult.model_validate(found[i][0][0]) for i in ids]


async def test_bad_input_is_refused_with_its_reason_and_the_service_goes_on(
    kafka_bootstrap, redis_url, topics, tmp_path
):
    async with Served(kafka_bootstrap, redis_url, topics, tmp_path) as s:
        rows = [x for x, _ in sea_rows(3)]
        out_of_range = [{**rows[0], "x1": 99.0}, *rows[1:]]
        cases = {
            "row 0: out_of_range": ("sea", sea_inputs(out_of_range, binary=False)),
            "missing_feature": ("sea", sea_inputs(rows)[:2]),
            "is not an input of model sea": ("sea", [*sea_inputs(rows), bytes_input("x9", ["a", "b", "c"])]),
            "has 2 rows": ("sea", [*sea_inputs(rows)[:2], *sea_inputs(rows[:2])[2:]]),
            "wrong_type": ("sea", [*sea_inputs(rows)[:2], bytes_input("x2", ["a", "b", "c"])]),
        }
        refused_before = answered_over_http(version="none", outcome="error", reason="out_of_range")
        for reason, (model, inputs) in cases.items():
            with pytest.raises(InferenceServerException) as refused:
                await s.call("infer", model, inputs)
            assert refused.value.status() == "400", (reason, refused.value)
            assert reason in refused.value.message(), (reason, refused.value.message())
        assert (
            answered_over_http(version="none", outcome="error", reason="out_of_range") == refused_before + 1
        )
        for model, status in (("nosuch", "404"), ("stagger", "503")):
            with pytest.raises(InferenceServerException) as refused:
                await s.call("infer", model, sea_inputs(rows))
            assert refused.value.status() == status
        async with httpx.AsyncClient(base_url=f"http://{s.url}") as client:
            short = {"inputs": [{"name": "x0", "shape": [2], "datatype": "FP64", "data": [1]}]}
            for body, reason in (
                (b"{not json", "invalid_request"),
                (b'{"inputs": []}', "inputs"),
                (orjson.dumps(short), "1 elements for shape [2]"),
            ):
                answer = await client.post("/v2/models/sea/infer", content=body)
                assert answer.status_code == 400 and reason in answer.json()["error"], answer.text
            assert (await client.get("/v2/models/sea/infer")).status_code == 405
        answer = await s.call("infer", "sea", sea_inputs(rows))
        assert set(answer.as_numpy("model_version")) == {1}


def answered_over_http(model="sea", version="1", outcome="ok", reason=""):
    labels = {"model": model, "version": version, "outcome": outcome, "reason": reason, "transport": "http"}
    return REGISTRY.get_sample_value("driftloop_predictions_total", labels) or 0.0


def bytes_input(name, values):
    tensor = triton.InferInput(name, [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array([v.encode() for v in values], dtype=np.object_), binary_data=False)
    return tensor


async def test_http_predictions_are_logged_once_for_the_monitor(kafka_bootstrap, redis_url, topics, tmp_path):
    """Each answered row goes to predictions.requests and predictions.results once, marked as
    HTTP traffic; the Kafka path does not answer the logged requests again."""
    async with Served(kafka_bootstrap, redis_url, topics, tmp_path) as s:
        rows = [x for x, _ in sea_rows(20)]
        await kafka_answers(s, "sea", rows[:6])  # the Kafka path consumes every partition
        before = answered_over_http()
        answers = [
            await s.call("infer", "sea", sea_inputs(rows[i : i + 5]), request_id=f"log{i}")
            for i in (0, 5, 10, 15)
        ]
        ids = [i.decode() for a in answers for i in a.as_numpy("request_id").tolist()]
        assert answered_over_http() - before == 20, (
            "driftloop_predictions_total{transport=http} counts each row"
        )
        requests = await results_of(kafka_bootstrap, topics.predictions_requests, ids)
        await kafka_answers(s, "sea", rows[:6])  # requests sent after the log are answered ...
        results = await results_of(kafka_bootstrap, topics.predictions_results, ids, settle_s=2.0)
        assert sorted(requests) == sorted(results) == sorted(ids)  # ... and the logged ones not again
        assert all(len(results[i]) == 1 and LOGGED in results[i][0][1] for i in ids), "answered once, marked"
        assert all(len(requests[i]) == 1 and LOGGED in requests[i][0][1] for i in ids)
        assert requests["log0-0"][0][0]["features"] == pytest.approx(rows[0])
        assert {results[i][0][0]["model_version"] for i in ids} == {1}


async def test_a_swap_under_http_load_fails_no_request(kafka_bootstrap, redis_url, topics, tmp_path):
    async with Served(kafka_bootstrap, redis_url, topics, tmp_path) as s:
        rows = [x for x, _ in sea_rows(64)]
        seen: list[tuple[float, int]] = []
        failures: list[BaseException] = []
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + 4.0

        async def worker(k):
            client = triton_aio.InferenceServerClient(s.url)
            try:
                while loop.time() < stop_at:
                    try:
                        answer = await client.infer("sea", sea_inputs(rows[k : k + 2]))
                    except Exception as exc:
                        failures.append(exc)
                        continue
                    versions = set(answer.as_numpy("model_version").tolist())
                    seen.append((loop.time(), versions.pop() if len(versions) == 1 else -1))
            finally:
                await client.close()

        async def swap():
            await asyncio.sleep(1.5)
            await s.promote(("sea", 2))

        await asyncio.gather(*(worker(k) for k in range(16)), swap())
        assert not failures, failures[:3]
        versions = [v for _, v in sorted(seen)]
        assert len(versions) > 200 and -1 not in versions, "a response mixed versions"
        assert versions[0] == 1 and versions[-1] == 2
        last_v1 = max(i for i, v in enumerate(versions) if v == 1)
        assert all(v == 2 for v in versions[last_v1 + 1 :])


async def test_auth_limits_and_a_drain_at_shutdown(kafka_bootstrap, redis_url, topics, tmp_path):
    limits = {
        "http_token": "s3cret",
        "http_max_body_bytes": 4096,
        "http_batch_delay_ms": 300,
        "http_max_rows": 100,
    }
    async with Served(kafka_bootstrap, redis_url, topics, tmp_path, **limits) as s:
        rows = [x for x, _ in sea_rows(2)]
        assert await s.call("is_server_live"), "health is open"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            with pytest.raises(InferenceServerException) as refused:
                await s.call("infer", "sea", sea_inputs(rows), headers=headers)
            assert refused.value.status() == "401"
        bearer = {"Authorization": "Bearer s3cret"}
        answer = await s.call("infer", "sea", sea_inputs(rows), headers=dict(bearer))  # it adds headers
        assert set(answer.as_numpy("model_version")) == {1}
        async with httpx.AsyncClient(base_url=f"http://{s.url}", headers=bearer) as client:
            column = {"name": "x0", "shape": [2000], "datatype": "FP64", "data": [1.0] * 2000}
            big = orjson.dumps({"inputs": [column]})
            assert (await client.post("/v2/models/sea/infer", content=big)).status_code == 413
            bomb = gzip.compress(b" " * 1_000_000)
            gzipped = {"content-encoding": "gzip"}
            answer = await client.post("/v2/models/sea/infer", content=bomb, headers=gzipped)
            assert answer.status_code == 413, answer.text
            many = {
                "inputs": [
                    {"name": n, "shape": [101], "datatype": "FP64", "data": [1.0] * 101} for n in ("x0", "x1")
                ]
            }
            huge = {"inputs": [{"name": "x0", "shape": [10**12], "datatype": "FP64", "data": [1.0]}]}
            for body in (many, huge):  # read plainly, and through the contract
                answer = await client.post("/v2/models/sea/infer", content=orjson.dumps(body))
                assert answer.status_code == 413 and "over the limit of 100 rows" in answer.text, answer.text
            past_floats = (
                b'{"inputs": [{"name": "x0", "shape": [1], "datatype": "FP64", "data": [1'
                + b"0" * 400
                + b"]}]}"
            )
            answer = await client.post("/v2/models/sea/infer", content=past_floats)
            assert answer.status_code == 400 and "past FP64's range" in answer.text, answer.text
            one = [
                {"name": n, "shape": [1], "datatype": "FP64", "data": [rows[0][n]]}
                for n in ("x0", "x1", "x2")
            ]
            small = {"id": "gz", "inputs": one}
            answer = await client.post(
                "/v2/models/sea/infer", content=gzip.compress(orjson.dumps(small)), headers=gzipped
            )
            assert answer.status_code == 200 and answer.json()["id"] == "gz"

            # requests waiting in a batching window when the shutdown comes are answered and logged
            async def one(i):
                body = {**small, "id": f"drain-{i}"}
                return await client.post("/v2/models/sea/infer", content=orjson.dumps(body))

            calls = [asyncio.create_task(one(i)) for i in range(20)]
            await asyncio.sleep(0.1)
            await s.stop()
            answers = await asyncio.gather(*calls)
        assert [a.status_code for a in answers] == [200] * 20
        drained = [f"drain-{i}" for i in range(20)]
        logged = await results_of(kafka_bootstrap, topics.predictions_results, drained)
        assert len(logged) == 20


async def test_the_http_client_and_the_cli_ask_over_http(kafka_bootstrap, redis_url, topics, tmp_path):
    async with Served(kafka_bootstrap, redis_url, topics, tmp_path) as s:
        rows = [x for x, _ in sea_rows(4)]
        mixed = [rows[0], {**rows[1], "x2": None}, {"x0": 1.0}, {**rows[3], "x1": "nine"}, rows[2]]
        async with HttpPredictionClient(f"http://{s.url}") as client:
            results = await client.predict_many("sea", mixed)
            explained = await client.predict("sea", rows[0], explain=True)
        assert [r.model_version for r in results] == [1, 0, 0, 0, 1] and results[0].explanation is None
        assert explained.explanation == pytest.approx(
            (await kafka_answers(s, "sea", rows[:1], explain=True))[0].explanation, abs=1e-6
        )
        assert results[1].error.startswith("missing_feature") and results[2].error.startswith(
            "missing_feature"
        )
        assert "wrong_type" in results[3].error
        assert results[0].probabilities == pytest.approx(
            (await kafka_answers(s, "sea", rows[:1]))[0].probabilities
        )
        cli = await asyncio.create_subprocess_exec(
            str(ROOT / ".venv" / "bin" / "driftloop"), "predict", "sea", "x0=9", "x1=9", "x2=1", "--http",
            f"http://{s.url}", "--explain", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await cli.communicate()
        assert cli.returncode == 0, err.decode()
        assert orjson.loads(out)["model_version"] == 1 and set(orjson.loads(out)["explanation"]) == {
            "x0",
            "x1",
            "x2",
        }
        cli = await asyncio.create_subprocess_exec(
            str(ROOT / ".venv" / "bin" / "driftloop"), "predict", "stagger", "size=small", "color=red",
            "shape=circle", "--http", f"http://{s.url}", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await cli.communicate()
        assert cli.returncode == 1 and "no_champion" in err.decode()


@pytest.mark.parametrize("mode", ["shadow", "canary"])
async def test_a_challenger_serves_http_traffic_as_it_serves_kafka_traffic(
    kafka_bootstrap, redis_url, topics, tmp_path, mode
):
    """Shadow: every row answered by the champion, the challenger's answers logged to
    predictions.shadow. Canary: each row served by the version its request id hashes to."""
    serving = f"serving: {{challenger_mode: {mode}, canary_share: 0.5}}\n"
    async with Served(kafka_bootstrap, redis_url, topics, tmp_path, sea_serving=serving) as s:
        v2 = s.events["sea", 2]
        challenger = ModelAwaitingApproval(model="sea", version=2, artifact=v2.artifact, classes=v2.classes,
                                           feature_names=v2.feature_names, reason="test")  # fmt: skip
        await s.bus.publish(topics.models_lifecycle, [challenger])
        for _ in range(300):
            if (await s.call("get_model_metadata", "sea"))["versions"] == ["1", "2"]:
                break
            await asyncio.sleep(0.1)
        rows = [x for x, _ in sea_rows(60)]
        answer = await s.call("infer", "sea", sea_inputs(rows), request_id=f"{mode}-batch")
        ids = [i.decode() for i in answer.as_numpy("request_id").tolist()]
        versions = answer.as_numpy("model_version").tolist()
        if mode == "canary":
            assert versions == [2 if to_canary(i, 0.5) else 1 for i in ids] and set(versions) == {1, 2}
            assert answer.get_response()["model_version"] == "1,2"
        else:
            assert set(versions) == {1}
            shadowed = await results_of(kafka_bootstrap, topics.predictions_shadow, ids)
            assert sorted(shadowed) == sorted(ids)
            assert {shadowed[i][0][0]["model_version"] for i in ids} == {2}
