"""`make bench-scale`: inference instances joining and leaving a consumer group under load.

On six partitions, the instance count goes 1 -> 2 -> 3 -> 2 -> 1. Each change happens halfway
through `STEADY_S` seconds of steady requests (`STEADY_RATE`/s): a new process starts, or one
stops gracefully (SIGTERM: it finishes its batch, commits and leaves the group). Once the group has
settled, a burst of `BURST` requests measures the results/s that many instances give, next to the
ceiling (a bare echo on the same broker) measured at the start. Every request of the run is counted
by id: lost (never answered) and repeated (answered twice). CPU per process is noted per step: on
a 2-core machine the broker and the cores bound the curve, and the table says which.

Usage: python -m bench.scale
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import start_broker_and_redis, stop_processes, table, wait_ready, write
from bench.inference import SPEC, model_event, payloads
from bench.traffic import Reader, burst, offered_load
from driftloop.artifacts import ArtifactStore
from driftloop.client import make_producer, send_all
from driftloop.connections import object_store
from driftloop.fastpath import BatchSender
from driftloop.kafka import ensure_topics
from driftloop.localstack import free_port
from driftloop.settings import ServiceSettings, Topics
from driftloop.specbook import apply_specs

PARTITIONS = 6
STEPS = (1, 2, 3, 2, 1)
STEADY_RATE, STEADY_S = 1_000, 12
BURST = 50_000
SETTLE_S = 5  # after a change: the group rebalances (a join takes about 3 s on tansu)
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


class Fleet:
    """Inference processes of one consumer group, started and stopped one at a time."""

    def __init__(self, env: dict[str, str], work: Path) -> None:
        self.env, self.work = env, work
        self.running: list[tuple[subprocess.Popen[bytes], int]] = []
        self.stopped: list[subprocess.Popen[bytes]] = []

    def start(self) -> int:
        port = free_port()
        env = {**self.env, "DRIFTLOOP_HTTP_PORT": str(port), "DRIFTLOOP_DATA_DIR": str(self.work / str(port))}
        self.running.append(
            (subprocess.Popen([sys.executable, "-m", "driftloop_inference.app"], env=env), port)
        )
        return port

    def stop_one(self) -> None:
        proc, _ = self.running.pop()
        proc.terminate()  # graceful: the batch in hand is finished and committed, then it leaves
        self.stopped.append(proc)

    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self.running]


async def run(tmp: Path) -> dict:
    procs, bootstrap, redis_port = start_broker_and_redis(tmp)
    topics = Topics()
    settings = ServiceSettings(kafka_bootstrap=bootstrap, kafka_partitions=PARTITIONS)
    await ensure_topics(settings, [*topics.all(), "echo.requests", "echo.responses"])
    models = tmp / "models"
    models.mkdir()
    (models / "bench.yaml").write_text(SPEC)
    await apply_specs(settings, models)
    objects = {"DRIFTLOOP_OBJECT_STORE_URL": str(tmp / "objects")}
    store = ArtifactStore(object_store(ServiceSettings(object_store_url=str(tmp / "objects"))))
    producer = make_producer(bootstrap)
    await producer.start()
    await send_all(producer, topics.models_lifecycle, [await model_event(store, 1, seed=1)])
    env = {
        **os.environ,
        "DRIFTLOOP_KAFKA_BOOTSTRAP": bootstrap,
        "DRIFTLOOP_KAFKA_PARTITIONS": str(PARTITIONS),
        "DRIFTLOOP_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        **objects,
        "DRIFTLOOP_LOG_LEVEL": "WARNING",
    }
    echo = subprocess.Popen(
        [sys.executable, "-m", "bench.echo", "echo.requests", "echo.responses"],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    fleet = Fleet(env, tmp)
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        wait_ready(fleet.start(), "inference")
        await asyncio.sleep(SETTLE_S)
        sender = await BatchSender.connect(bootstrap, "bench")
        echo_reader, reader = (
            Reader(bootstrap, "echo.responses"),
            Reader(bootstrap, topics.predictions_results),
        )
        await echo_reader.start()
        await reader.start()
        warm = payloads(2000, seed=99)
        await burst(sender, echo_reader, "echo.requests", warm)
        await burst(sender, reader, topics.predictions_requests, warm)
        ceiling = await burst(sender, echo_reader, "echo.requests", payloads(BURST, 1))
        sent: set[bytes] = {k for k, _ in warm}
        steps = []
        for n, count in enumerate(STEPS):
            change = "start" if n == 0 else ("join" if count > len(fleet.running) else "leave")
            if n:

                async def act(join: bool = change == "join") -> None:
                    if join:
                        fleet.start()
                    else:
                        fleet.stop_one()

                items = payloads(STEADY_RATE * STEADY_S, seed=1000 + n)
                steady, _ = await offered_load(
                    sender, reader, topics.predictions_requests, items, STEADY_RATE, act
                )
                sent |= steady.keys()
                await asyncio.sleep(SETTLE_S)
            watched = {
                "broker": procs[0].pid,
                **{f"inference {i + 1}": p for i, p in enumerate(fleet.pids())},
            }
            before, started = {k: cpu_seconds(p) for k, p in watched.items()}, time.perf_counter()
            items = payloads(BURST, seed=2000 + n)
            rate = await burst(sender, reader, topics.predictions_requests, items)
            elapsed = time.perf_counter() - started
            sent |= {k for k, _ in items}
            cpu = {k: round(100 * (cpu_seconds(p) - before[k]) / elapsed) for k, p in watched.items()}
            steps.append({"instances": count, "change": change, "results_per_s": round(rate),
                          "ratio": round(rate / ceiling, 3), "cpu_percent": cpu})  # fmt: skip
            print(f"  {count} instance(s) ({change}): {rate:,.0f} results/s, CPU % {cpu}", flush=True)
        await reader.wait_for(sent, 30)
        await asyncio.sleep(2)  # a repeat would come after the first answer
        lost = sum(1 for k in sent if k not in reader.arrivals)
        repeated = sum(len(reader.arrivals[k]) - 1 for k in sent if k in reader.arrivals)
        await sender.stop()
        await echo_reader.stop()
        await reader.stop()
        await producer.stop()
        return {"ceiling_per_s": round(ceiling), "steps": steps, "requests": len(sent), "lost": lost,
                "repeated": repeated}  # fmt: skip
    finally:
        stop_processes([*procs, echo, *fleet.stopped, *(proc for proc, _ in fleet.running)])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(Path(tmp)))
    result.update({
        "partitions": PARTITIONS, "steady_rate": STEADY_RATE, "steady_s": STEADY_S, "burst": BURST,
        "cores": os.cpu_count(), "model": "HistGradientBoosting, 100 trees, 12 features",
    })  # fmt: skip
    rows: list[tuple[str, object]] = []
    for step in result["steps"]:
        cpu = ", ".join(f"{k} {v}%" for k, v in step["cpu_percent"].items())
        figure = f"{step['results_per_s']:,} results/s (ratio {step['ratio']}); CPU {cpu}"
        rows.append((f"{step['instances']} instance(s), {step['change']}", figure))
    rows += [
        ("echo ceiling", f"{result['ceiling_per_s']:,} /s"),
        ("requests", result["requests"]),
        ("lost (target 0)", result["lost"]),
        ("answered twice (target 0)", result["repeated"]),
    ]
    print()
    print(table(f"bench-scale, one run: inference 1 -> 2 -> 3 -> 2 -> 1 on {PARTITIONS} partitions", rows))
    print(f"\nwrote {write('scale', result)}")


if __name__ == "__main__":
    main()
