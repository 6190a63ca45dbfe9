"""`make bench-inference`: the inference service against the broker's ceiling, in one run.

1. ceiling: a batched aiokafka echo (bench/echo.py) on the same loop and settings;
2. the inference service (a real process) with HistGradientBoosting of 100 trees on 12 features:
   sustained results/s for a burst of requests;
3. request produced → result consumed latency at fixed offered loads of 1k and 5k requests/s, next to
   the echo's at the same loads;
4. peak RSS of the inference process;
5. a model swap under 5k requests/s: lost and duplicated results.

`--object-store s3` keeps the artifacts on a local S3-protocol server instead of a directory
(results in `bench/results/inference_s3.json`): serving should not change with the store.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import orjson
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier

from bench.common import (
    start_broker_and_redis,
    start_s3,
    stop_processes,
    table,
    wait_ready,
    write,
)
from bench.traffic import Reader, burst, latency, offered_load
from driftloop.artifacts import ArtifactStore
from driftloop.client import make_producer, send_all
from driftloop.connections import object_store
from driftloop.contracts import ModelPromoted
from driftloop.fastpath import BatchSender
from driftloop.kafka import ensure_topics
from driftloop.localstack import free_port, object_store_settings
from driftloop.settings import ServiceSettings, Topics
from driftloop.specbook import apply_specs
from driftloop_training.adapters import convert

FEATURES = [f"f{i}" for i in range(12)]
BURST = 100_000
LOAD_SECONDS = 10  # the swap run
LATENCY_ROUNDS, LATENCY_SECONDS = 3, 5  # per offered load: 3 alternating rounds of 5 s per target
SPEC = "\n".join(
    [
        "name: bench",
        "features:",
        *[f"  - {{name: {name}, type: numeric}}" for name in FEATURES],
        "label: {classes: [0, 1]}",
        "algorithm: {name: hist_gradient_boosting, params: {max_iter: 100, early_stopping: false}}",
    ]
)


async def model_event(store: ArtifactStore, version: int, seed: int) -> ModelPromoted:
    X, y = make_classification(n_samples=20_000, n_features=len(FEATURES), n_informative=8, random_state=seed)
    model = HistGradientBoostingClassifier(max_iter=100, early_stopping=False, random_state=seed).fit(X, y)
    artifact = await store.put(convert(model, len(FEATURES)))
    return ModelPromoted(
        model="bench",
        version=version,
        artifact=artifact,
        classes=[0, 1],
        feature_names=FEATURES,
        reason="bench",
    )


def payloads(n: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, len(FEATURES))).round(4)
    out = []
    for i in range(n):
        request_id = f"{seed}-{i}"
        body = {
            "request_id": request_id,
            "model": "bench",
            "features": dict(zip(FEATURES, values[i].tolist(), strict=True)),
        }
        out.append((request_id.encode(), orjson.dumps(body)))
    return out


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(tmp: Path, backend: str) -> dict:
    procs, bootstrap, redis_port = start_broker_and_redis(tmp)
    objects = {"DRIFTLOOP_OBJECT_STORE_URL": str(tmp / "objects")}
    if backend == "s3":
        s3, objects = start_s3()
        procs.append(s3)
    http_port = free_port()
    topics = Topics()
    settings = ServiceSettings(kafka_bootstrap=bootstrap)
    await ensure_topics(settings, [*topics.all(), "echo.requests", "echo.responses"])
    models = tmp / "models"
    models.mkdir()
    (models / "bench.yaml").write_text(SPEC)
    await apply_specs(settings, models)
    store = ArtifactStore(object_store(ServiceSettings(**object_store_settings(objects))))
    v1, v2 = await model_event(store, 1, seed=1), await model_event(store, 2, seed=2)
    producer = make_producer(bootstrap)
    await producer.start()
    await send_all(producer, topics.models_lifecycle, [v1])
    env = {
        **os.environ,
        "DRIFTLOOP_KAFKA_BOOTSTRAP": bootstrap,
        "DRIFTLOOP_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        **objects,
        "DRIFTLOOP_HTTP_PORT": str(http_port),
        "DRIFTLOOP_LOG_LEVEL": "WARNING",
    }
    service = subprocess.Popen([sys.executable, "-m", "driftloop_inference.app"], env=env)
    echo = subprocess.Popen(
        [sys.executable, "-m", "bench.echo", "echo.requests", "echo.responses"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    procs += [service, echo]
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        wait_ready(http_port, "inference")
        await asyncio.sleep(4)  # both consumer groups have joined (a join takes 3 s on tansu)
        sender = await BatchSender.connect(bootstrap, "bench")
        echo_reader, service_reader = (
            Reader(bootstrap, "echo.responses"),
            Reader(bootstrap, topics.predictions_results),
        )
        await echo_reader.start()
        await service_reader.start()
        figures: dict = {}
        warm = payloads(2000, seed=99)
        await burst(sender, echo_reader, "echo.requests", warm)
        await burst(sender, service_reader, topics.predictions_requests, warm)
        figures["ceiling_msgs_per_s"] = await burst(sender, echo_reader, "echo.requests", payloads(BURST, 1))
        figures["inference_results_per_s"] = await burst(
            sender, service_reader, topics.predictions_requests, payloads(BURST, 2)
        )
        for rate in (1000, 5000):  # echo and service alternate, so both see the same machine
            echo_sent: dict[bytes, float] = {}
            service_sent: dict[bytes, float] = {}
            for round_ in range(LATENCY_ROUNDS):
                items = payloads(int(rate * LATENCY_SECONDS), seed=100 * rate + 2 * round_)
                echo_sent.update((await offered_load(sender, echo_reader, "echo.requests", items, rate))[0])
                items = payloads(int(rate * LATENCY_SECONDS), seed=100 * rate + 2 * round_ + 1)
                target = topics.predictions_requests
                service_sent.update((await offered_load(sender, service_reader, target, items, rate))[0])
            figures[f"echo_{rate}"] = latency(echo_sent, echo_reader)
            figures[f"service_{rate}"] = latency(service_sent, service_reader)

        async def swap() -> None:
            await send_all(producer, topics.models_lifecycle, [v2])

        service_reader.track_versions = True
        items = payloads(5000 * LOAD_SECONDS, seed=7)
        sent, _ = await offered_load(
            sender, service_reader, topics.predictions_requests, items, 5000, during=swap
        )
        await asyncio.sleep(2)
        figures["swap_lost"] = sum(1 for k in sent if k not in service_reader.arrivals)
        figures["swap_duplicated"] = sum(
            len(service_reader.arrivals[k]) - 1 for k in sent if k in service_reader.arrivals
        )
        figures["swap_versions"] = sorted({service_reader.versions.get(k, 0) for k in sent})
        figures["rss_mb"] = rss_peak_mb(service.pid)
        await sender.stop()
        await echo_reader.stop()
        await service_reader.stop()
        await producer.stop()
        return figures
    finally:
        stop_processes(procs)


def main() -> None:
    parser = argparse.ArgumentParser(description="bench-inference")
    parser.add_argument("--object-store", choices=("file", "s3"), default="file")
    backend = parser.parse_args().object_store
    with tempfile.TemporaryDirectory() as tmp:
        f = asyncio.run(run(Path(tmp), backend))
    result = {
        "ceiling_msgs_per_s": round(f["ceiling_msgs_per_s"]),
        "inference_results_per_s": round(f["inference_results_per_s"]),
        "ratio": round(f["inference_results_per_s"] / f["ceiling_msgs_per_s"], 3),
        "p50_ms_1k": round(f["service_1000"]["p50"], 2),
        "p99_ms_1k": round(f["service_1000"]["p99"], 2),
        "p999_ms_1k": round(f["service_1000"]["p999"], 2),
        "echo_p50_ms_1k": round(f["echo_1000"]["p50"], 2),
        "echo_p99_ms_1k": round(f["echo_1000"]["p99"], 2),
        "added_p99_ms_1k": round(f["service_1000"]["p99"] - f["echo_1000"]["p99"], 2),
        "p50_ms_5k": round(f["service_5000"]["p50"], 2),
        "p99_ms_5k": round(f["service_5000"]["p99"], 2),
        "p999_ms_5k": round(f["service_5000"]["p999"], 2),
        "echo_p99_ms_5k": round(f["echo_5000"]["p99"], 2),
        "rss_mb": round(f["rss_mb"], 1),
        "swap_lost": f["swap_lost"],
        "swap_duplicated": f["swap_duplicated"],
        "swap_versions_seen": f["swap_versions"],
        "fetch_max_wait_ms": ServiceSettings().kafka_fetch_max_wait_ms,
        "model": "HistGradientBoosting, 100 trees, 12 features",
        "object_store": backend,
    }
    print()
    print(
        table(
            "bench-inference, one run (targets: ratio >= 0.6, added p99 <= 5 ms, RSS <= 400 MB, swap 0/0)",
            [(k, v) for k, v in result.items()],
        )
    )
    print(f"\nwrote {write('inference' if backend == 'file' else 'inference_s3', result)}")


if __name__ == "__main__":
    main()
