"""The services as on separate hosts: six processes, each with a private data directory, artifacts
only through an S3-protocol server, specs only through `models.specs`. While they run, a brand-new
model and a changed spec are applied: the new model is trained, gated, promoted and served, and the
old champion keeps answering with its own spec until its successor is promoted. No service is
restarted. Then a second inference instance on an empty directory serves the same champions."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import shutil
import subprocess
import sys
import uuid

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from driftloop import datasets, localstack
from driftloop.client import PredictionClient
from driftloop.connections import object_store
from driftloop.contracts import TrainModel
from driftloop.localstack import free_port
from driftloop.settings import ServiceSettings, Topics
from driftloop.specbook import apply_specs
from tests.conftest import ROOT, wait_for
from tests.helpers import served_versions

TOPICS = Topics()
SHOP = """\
name: shop
description: a basket is returned or not, from its amount and the channel it was bought on
features:
  - {name: amount, type: numeric, min: 0, max: 10}
  - {name: channel, type: categorical, categories: [web, store, app]}
label: {classes: [kept, returned]}
algorithm: {name: logistic_regression}
training: {min_rows: 400, wait_for_rows_s: 120}
gate: {metric: accuracy, floor: 0.6, auto_promote: true}
"""
WIDE = {"x0": 15.0, "x1": 1.0, "x2": 1.0}  # valid for the changed sea spec only (x0 up to 20)


def _shop_rows(n: int) -> list[dict]:
    rng = random.Random(5)
    rows = []
    for i in range(n):
        amount, channel = rng.uniform(0, 10), rng.choice(["web", "store", "app"])
        returned = amount > 5 or channel == "app"
        features = {"amount": amount, "channel": channel}
        label = "returned" if returned else "kept"
        rows.append({"event_id": f"shop-{i}", "model": "shop", "features": features, "label": label})
    return rows


async def _send(stack: localstack.Stack, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, enable_idempotence=False, linger_ms=5)
    await producer.start()
    try:
        for value in values:
            await producer.send(topic, value)
        await producer.flush()
    finally:
        await producer.stop()


async def _train(stack: localstack.Stack, model: str, min_rows: int) -> None:
    command = TrainModel(command_id=uuid.uuid4().hex, model=model, reason="test", min_rows=min_rows)
    await _send(stack, TOPICS.training_requests, [command.model_dump_json().encode()])


@pytest.mark.slow
async def test_services_apart_take_a_new_model_and_a_changed_spec_without_a_restart(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(ROOT / "models" / "sea.yaml", models / "sea.yaml")
    run = tmp_path / "run"
    stack = await asyncio.to_thread(localstack.up, run, models, 90.0, "s3")
    second: subprocess.Popen[bytes] | None = None
    try:
        pids = dict(stack.pids)
        history = itertools.islice(datasets.sea(0, seed=3), 2000)
        sea_rows = [{"event_id": f"sea-{i}", "model": "sea", "features": x, "label": y}
                    for i, (x, y) in enumerate(history)]  # fmt: skip
        await _send(stack, TOPICS.events_raw, [orjson.dumps(r) for r in sea_rows])
        await _train(stack, "sea", 1500)
        async with PredictionClient(stack.bootstrap, timeout_s=20) as client:
            assert await served_versions(client, "sea", [{"x0": 9.0, "x1": 9.0, "x2": 1.0}], {1}, 120) == {1}
            [refused] = await client.predict_many("sea", [WIDE])
            assert refused.error == "out_of_range: x0=15.0 outside [0.0, 10.0]"

            # while everything runs: a brand-new model, and sea's spec changed (x0 up to 20)
            (models / "shop.yaml").write_text(SHOP)
            changed = (
                (models / "sea.yaml")
                .read_text()
                .replace(
                    "{name: x0, type: numeric, min: 0, max: 10}", "{name: x0, type: numeric, min: 0, max: 20}"
                )
            )
            (models / "sea.yaml").write_text(changed)
            settings = ServiceSettings(kafka_bootstrap=stack.bootstrap)
            plan = {m: (v, s) for m, v, s in await apply_specs(settings, models)}
            assert {m: s for m, (_, s) in plan.items()} == {"sea": "changed", "shop": "new"}

            # the champion keeps the spec it was trained with until its successor is promoted
            await asyncio.sleep(2)  # every service has read the new versions
            [still] = await client.predict_many("sea", [WIDE])
            assert still.error == "out_of_range: x0=15.0 outside [0.0, 10.0]"  # champion v1's own spec

            await _send(stack, TOPICS.events_raw, [orjson.dumps(r) for r in _shop_rows(800)])
            await _train(stack, "shop", 600)
            await _train(stack, "sea", 1500)
            basket = [{"amount": 8.0, "channel": "web"}, {"amount": 1.0, "channel": "app"},
                      {"amount": 1.0, "channel": "store"}]  # fmt: skip
            assert await served_versions(client, "shop", basket, {1}, 120) == {1}
            answers = await client.predict_many("shop", basket)
            assert [a.prediction for a in answers] == ["returned", "returned", "kept"], answers
            assert await served_versions(client, "sea", [{"x0": 9.0, "x1": 9.0, "x2": 1.0}], {2}, 120) == {2}
            [wide] = await client.predict_many("sea", [WIDE])
            assert wide.error is None and wide.model_version == 2  # now read with the new spec

        card = httpx.get(f"{stack.url('registry')}/v1/card", params={"model": "sea", "version": 2}).json()
        assert card["trained"]["spec_version"] == plan["sea"][0]  # what v2 was trained with
        kept = httpx.get(f"{stack.url('registry')}/v1/specs", params={"model": "sea"}).json()
        assert [(e["version"], e["in_force"]) for e in kept][-1] == (plan["sea"][0], True) and len(kept) == 2
        assert stack.pids == pids, "a service was restarted"
        for service in ("registry", "monitor", "inference"):  # the new model is kept, watched and served
            text = httpx.get(f"{stack.url(service)}/metrics", timeout=5).text
            versions = [line for line in text.splitlines() if line.startswith("driftloop_model_version{")]
            assert f'driftloop_model_version{{model="shop",service="{service}"}} 1.0' in versions, versions
        var = run / "var"
        assert not (var / "objects").exists()  # no artifact went through a shared directory
        objects = object_store(ServiceSettings(**localstack.object_store_settings(stack.object_store_env())))
        offline: list[str] = []  # the offline store, readable by any Parquet reader (copied every 5 s)
        for _ in range(60):
            if offline := await objects.keys("offline/shop"):
                break
            await asyncio.sleep(0.5)
        assert offline and all(k.endswith(".parquet") and "/date=" in k for k in offline)

        # a second inference instance on an empty directory of its own serves the same champions
        port = free_port()
        own = {"DRIFTLOOP_HTTP_PORT": str(port), "DRIFTLOOP_DATA_DIR": str(tmp_path / "another-host")}
        env = {**os.environ, **localstack.service_env(stack, "inference"), **own}
        second = subprocess.Popen([sys.executable, "-m", "driftloop_inference.app"], env=env)

        def serving() -> dict:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json().get("serving", {})
            except (httpx.HTTPError, ValueError):
                return {}

        await wait_for(lambda: serving() == {"sea": 2, "shop": 1}, 60, "the second instance to serve")
        cached = {p.name for p in (tmp_path / "another-host" / "artifact-cache").iterdir()}
        assert len(cached) == 2
    finally:
        if second is not None:
            second.terminate()
            second.wait(timeout=20)
        await asyncio.to_thread(localstack.down, run)
