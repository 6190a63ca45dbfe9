"""`make bench-http`: the inference service's v2 HTTP API (the Open Inference Protocol) under load,
in one run, against two others on the same machine:

- the ceiling: a handler with no model in the same server process (`bench/http_server.py`:
  the same HTTP stack, body, JSON and contract, a same-size answer);
- Seldon MLServer serving the same fitted model with its scikit-learn runtime, with its default
  settings and with its adaptive batching set as driftloop's dynamic batching (a window of
  `http_batch_delay_ms`, at most `http_batch_rows` rows). It is installed into
  `var/bench/mlserver-<version>` on first use; when that cannot be done the row says why.

The model: HistGradientBoosting, 100 trees, 12 features (as bench-inference), as ONNX for
driftloop, as joblib for MLServer. Every request is one row. Per target, in alternating rounds
(so each sees the same machine):

1. the highest sustained rate: `CONNECTIONS` keep-alive connections, each sending the next request
   as soon as the last is answered, for `SATURATE_S`: answers/s, p50 / p99;
2. latency at 1,000 requests/s offered (open loop: timed from each request's due time, so time
   waiting for a free connection counts), for `OFFERED_S`.

driftloop runs as deployed: results logged to Kafka (a tansu broker here), Prometheus metrics on.
Goals (issue 19): driftloop / ceiling >= 0.6 at saturation; ahead of MLServer on answers/s and p99.

Usage: python -m bench.http
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import orjson

from bench.common import start_broker_and_redis, stop_processes, table, wait_ready, write
from driftloop.artifacts import ArtifactStore
from driftloop.client import make_producer, send_all
from driftloop.connections import object_store
from driftloop.contracts import ModelPromoted
from driftloop.kafka import ensure_topics
from driftloop.localstack import free_port
from driftloop.settings import ServiceSettings, Topics
from driftloop.specbook import apply_specs
from driftloop_inference.settings import InferenceSettings
from driftloop_training.adapters import convert

ROOT = Path(__file__).resolve().parents[1]
MLSERVER = "1.7.1"
CONNECTIONS = 64
SATURATE_S, OFFERED_S, RATE, ROUNDS = 10.0, 10.0, 1_000, 3
FEATURES = [f"f{i}" for i in range(12)]
SPEC = "\n".join(
    [
        "name: bench",
        "features:",
        *[f"  - {{name: {name}, type: numeric}}" for name in FEATURES],
        "label: {classes: [0, 1]}",
        "algorithm: {name: hist_gradient_boosting, params: {max_iter: 100, early_stopping: false}}",
    ]
)


def fitted() -> Any:
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, y = make_classification(n_samples=20_000, n_features=len(FEATURES), n_informative=8, random_state=1)
    return HistGradientBoostingClassifier(max_iter=100, early_stopping=False, random_state=1).fit(X, y)


def bodies(n: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """n one-row requests: (driftloop's, a tensor per feature; MLServer's, one [1, 12] tensor)."""
    values = np.random.default_rng(seed).normal(size=(n, len(FEATURES))).round(4).tolist()
    ours = [
        orjson.dumps(
            {"id": f"{seed}-{i}", "inputs": [tensor(f, x) for f, x in zip(FEATURES, row, strict=True)]}
        )
        for i, row in enumerate(values)
    ]
    theirs = [
        orjson.dumps({
            "id": f"{seed}-{i}",
            "inputs": [{"name": "input-0", "shape": [1, len(FEATURES)], "datatype": "FP64", "data": row}],
            "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
        })
        for i, row in enumerate(values)
    ]  # fmt: skip
    return ours, theirs


def tensor(name: str, value: float) -> dict[str, Any]:
    return {"name": name, "shape": [1], "datatype": "FP64", "data": [value]}


def tree_seconds(pid: int) -> float:
    """CPU seconds of a process and its children (MLServer runs its models in worker processes)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    children: dict[int, list[tuple[int, list[str]]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append((int(stat.parent.name), fields))
    stack = [pid]
    own = Path(f"/proc/{pid}/stat")
    if own.exists():
        fields = own.read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    while stack:
        for child, fields in children.get(stack.pop(), []):
            total += (int(fields[11]) + int(fields[12])) / tick
            stack.append(child)
    return total


class Target:
    def __init__(self, name: str, url: str, payloads: list[bytes], pid: int) -> None:
        self.name, self.url, self.payloads, self.pid = name, url, payloads, pid
        self.saturated: list[tuple[float, list[float], float]] = []  # (answers/s, latencies, cpu %)
        self.offered: list[float] = []
        self.failed = 0


async def saturate(session: aiohttp.ClientSession, target: Target, seconds: float) -> None:
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    started, cpu = loop.time(), tree_seconds(target.pid)
    stop_at = started + seconds

    async def connection(k: int) -> None:
        i = k
        while loop.time() < stop_at:
            sent = loop.time()
            ok = await post(session, target, target.payloads[i % len(target.payloads)])
            if ok:
                latencies.append(loop.time() - sent)
            i += CONNECTIONS

    await asyncio.gather(*(connection(k) for k in range(CONNECTIONS)))
    wall = loop.time() - started
    target.saturated.append((len(latencies) / wall, latencies, 100 * (tree_seconds(target.pid) - cpu) / wall))


async def offer(session: aiohttp.ClientSession, target: Target, rate: float, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    free = asyncio.Semaphore(CONNECTIONS)
    started, tasks = loop.time(), []

    async def one(i: int, due: float) -> None:
        async with free:
            if await post(session, target, target.payloads[i % len(target.payloads)]):
                target.offered.append(loop.time() - due)

    for i in range(int(rate * seconds)):
        due = started + i / rate
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)


async def post(session: aiohttp.ClientSession, target: Target, body: bytes) -> bool:
    async with session.post(target.url, data=body, headers={"content-type": "application/json"}) as answer:
        await answer.read()
        if answer.status != 200:
            target.failed += 1
            if target.failed <= 3:
                print(f"{target.name}: HTTP {answer.status}: {(await answer.text())[:200]}", flush=True)
        return answer.status == 200


def mlserver_python() -> tuple[Path | None, str]:
    """MLServer's interpreter (installed on first use, with our scikit-learn), or None and why."""
    import sklearn

    venv = ROOT / "var" / "bench" / f"mlserver-{MLSERVER}-sklearn-{sklearn.__version__}"
    python = venv / "bin" / "python"
    if (venv / ".installed").exists():
        return python, ""
    print(f"installing MLServer {MLSERVER} into {venv.relative_to(ROOT)} (once) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        wanted = [
            f"mlserver=={MLSERVER}",
            f"mlserver-sklearn=={MLSERVER}",
            f"scikit-learn=={sklearn.__version__}",  # it loads the model our scikit-learn fitted
            "uvloop<0.22",  # with 0.22+ its inference workers stop at start: no current event loop
        ]
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *wanted], check=True, timeout=900)
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"MLServer {MLSERVER} did not install here: {exc}"
    (venv / ".installed").touch()
    return python, ""


def start_mlserver(
    python: Path, model: Any, tmp: Path, batching: bool
) -> tuple[subprocess.Popen[bytes], int]:
    import joblib

    settings = InferenceSettings()
    home = tmp / ("mlserver-batching" if batching else "mlserver")
    (home / "bench").mkdir(parents=True)
    joblib.dump(model, home / "bench" / "model.joblib")
    port = free_port()
    server = {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "debug": False}
    (home / "settings.json").write_bytes(orjson.dumps(server))
    model_settings: dict[str, Any] = {
        "name": "bench",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1"},
    }
    if batching:
        model_settings |= {
            "max_batch_size": settings.http_batch_rows,
            "max_batch_time": settings.http_batch_delay_ms / 1000,
        }
    (home / "bench" / "model-settings.json").write_bytes(orjson.dumps(model_settings))
    logged = (home / "mlserver.log").open("wb")
    proc = subprocess.Popen(
        [str(python.parent / "mlserver"), "start", str(home)],
        cwd=home,
        stdout=logged,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/models/bench/ready").status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.kill()
    tail = (home / "mlserver.log").read_text(errors="replace").splitlines()[-30:]
    raise RuntimeError("MLServer did not become ready; its log ends:\n" + "\n".join(tail))


async def run(tmp: Path) -> dict[str, Any]:
    procs, bootstrap, redis_port = start_broker_and_redis(tmp)
    model = fitted()
    figures: dict[str, Any] = {"mlserver": MLSERVER}
    try:
        topics, settings = Topics(), ServiceSettings(kafka_bootstrap=bootstrap)
        await ensure_topics(settings, topics.all())
        (tmp / "models").mkdir()
        (tmp / "models" / "bench.yaml").write_text(SPEC)
        await apply_specs(settings, tmp / "models")
        objects = str(tmp / "objects")
        artifact = await ArtifactStore(object_store(ServiceSettings(object_store_url=objects))).put(
            convert(model, len(FEATURES))
        )
        producer = make_producer(bootstrap)
        await producer.start()
        promoted = ModelPromoted(model="bench", version=1, artifact=artifact, classes=[0, 1],
                                 feature_names=FEATURES, reason="bench")  # fmt: skip
        await send_all(producer, topics.models_lifecycle, [promoted])
        await producer.stop()
        port = free_port()
        env = {**os.environ, "DRIFTLOOP_KAFKA_BOOTSTRAP": bootstrap, "DRIFTLOOP_OBJECT_STORE_URL": objects,
               "DRIFTLOOP_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "DRIFTLOOP_HTTP_PORT": str(port),
               "DRIFTLOOP_DATA_DIR": str(tmp / "inference"), "DRIFTLOOP_LOG_LEVEL": "WARNING"}  # fmt: skip
        server = subprocess.Popen([sys.executable, "-m", "bench.http_server"], env=env)
        procs.append(server)
        wait_ready(port, "inference")
        for _ in range(600):
            if httpx.get(f"http://127.0.0.1:{port}/v2/models/bench/ready").status_code == 200:
                break
            await asyncio.sleep(0.1)
        ours, theirs = bodies(20_000, seed=1)
        base = f"http://127.0.0.1:{port}"
        targets = [
            Target("ceiling (no model, same server)", f"{base}/bench/echo", ours, server.pid),
            Target("driftloop", f"{base}/v2/models/bench/infer", ours, server.pid),
        ]
        python, why = mlserver_python()
        figures["mlserver_missing"] = why or None
        if python is not None:
            for batching in (False, True):
                mlserver, mlserver_port = start_mlserver(python, model, tmp, batching)
                procs.append(mlserver)
                name = "MLServer, adaptive batching as driftloop's" if batching else "MLServer, defaults"
                url = f"http://127.0.0.1:{mlserver_port}/v2/models/bench/infer"
                targets.append(Target(name, url, theirs, mlserver.pid))
        connector = aiohttp.TCPConnector(limit=CONNECTIONS * len(targets), keepalive_timeout=120)
        async with aiohttp.ClientSession(connector=connector) as session:
            for target in targets:  # warm: connections open, code paths taken
                await saturate(session, target, 2.0)
                target.saturated.clear()
                target.failed = 0
            for round_ in range(ROUNDS):
                print(f"round {round_ + 1} of {ROUNDS} ...", flush=True)
                for target in targets:
                    await saturate(session, target, SATURATE_S)
                for target in targets:
                    if max(r for r, _, _ in target.saturated) >= 1.2 * RATE:  # else a backlog, not a latency
                        await offer(session, target, RATE, OFFERED_S)
        figures["targets"] = {t.name: summary(t) for t in targets}
        return figures
    finally:
        stop_processes(procs)


def summary(target: Target) -> dict[str, Any]:
    latencies = [x for _, lat, _ in target.saturated for x in lat]
    return {
        "answers_per_s": round(float(np.median([r for r, _, _ in target.saturated])), 1),
        "rounds_per_s": [round(r, 1) for r, _, _ in target.saturated],
        "p50_ms_saturated": round(1000 * float(np.percentile(latencies, 50)), 2),
        "p99_ms_saturated": round(1000 * float(np.percentile(latencies, 99)), 2),
        "server_cpu_percent_saturated": round(float(np.median([c for _, _, c in target.saturated])), 1),
        "p50_ms_1k": round(1000 * float(np.percentile(target.offered, 50)), 2) if target.offered else None,
        "p99_ms_1k": round(1000 * float(np.percentile(target.offered, 99)), 2) if target.offered else None,
        "failed": target.failed,
    }


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(run(Path(tmp)))
    targets = figures["targets"]
    ceiling, ours = targets["ceiling (no model, same server)"], targets["driftloop"]
    figures["ratio"] = round(ours["answers_per_s"] / ceiling["answers_per_s"], 3)
    rows: list[tuple[str, Any]] = []
    for name, t in targets.items():
        at_rate = f"cannot sustain {RATE}/s"
        if t["p99_ms_1k"] is not None:
            at_rate = f"at {RATE}/s p50 / p99 {t['p50_ms_1k']} / {t['p99_ms_1k']} ms"
        saturated = f"p50 / p99 {t['p50_ms_saturated']} / {t['p99_ms_saturated']} ms"
        cpu = f"server CPU {t['server_cpu_percent_saturated']}%"
        rate = f"{t['answers_per_s']:,.0f}/s (rounds {t['rounds_per_s']})"
        rows.append((name, f"{rate}, {saturated}, {cpu}; {at_rate}; failed {t['failed']}"))
    rows.append(("driftloop / ceiling (goal >= 0.6)", figures["ratio"]))
    for name, t in targets.items():
        if name.startswith("MLServer"):
            key = "vs " + name
            figures[key] = {
                "answers_per_s_ratio": round(ours["answers_per_s"] / t["answers_per_s"], 2),
                "p99_ms_saturated_ratio": round(ours["p99_ms_saturated"] / t["p99_ms_saturated"], 2),
                "p99_ms_1k_ratio": round(ours["p99_ms_1k"] / t["p99_ms_1k"], 2) if t["p99_ms_1k"] else None,
            }
            rows.append((f"driftloop {key}: answers/s, p99 saturated, p99 at 1k (ratios)",
                         " / ".join(str(v) for v in figures[key].values())))  # fmt: skip
    if figures["mlserver_missing"]:
        rows.append(("MLServer", figures["mlserver_missing"]))
    print()
    print(table(f"bench-http: one-row v2 requests, {CONNECTIONS} keep-alive connections", rows))
    print(f"\nwrote {write('http', figures)}")
    return 0 if all(t["failed"] == 0 for t in targets.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
