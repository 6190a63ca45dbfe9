"""`make bench-stack`: the whole local stack as deployed (broker, Redis, Prometheus, six services),
under labelled traffic as an application makes it: requests, their results, each label sent as
feedback half a second after its result, and the labelled rows going round through ingest, feature
and the training store. In one run, on one machine:

1. the ceiling: a bare echo (bench/echo.py) on the same broker, answering each request;
2. results/s for 50,000 requests sent as fast as possible, stack vs echo, five alternating rounds
   (each drained before the next), medians compared;
3. request -> result latency at 1,000 requests/s, stack vs echo, three alternating rounds;
4. the highest sustained closed-loop rate: offered rates double from 500/s while every consumer
   group's lag stays bounded in the second half of a step of `STEP_S` seconds (at most `LAG_S`
   seconds of its input, growing by less than `GROWTH` of its input rate) and every request is
   answered, then two bisection steps;
5. per step, the CPU share of every process and the lag of every group;
6. endurance: 1,000 requests/s for `ENDURANCE_S`, latency and the broker's CPU per 30 s window
   (the embedded broker gets slower as it fills: `bench/broker.py`).

Usage: python -m bench.stack   (BENCH_STACK_STEP_S=20 for a quicker, rougher search)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.common import table, write
from bench.traffic import Reader, burst, latency, offer, offered_load
from driftloop import datasets, live, localstack
from driftloop.client import make_producer
from driftloop.demo import Watcher
from driftloop.fastpath import BatchSender, Output
from driftloop.kafka import ensure_topics, group_lag
from driftloop.settings import ServiceSettings, Topics

ROOT = Path(__file__).resolve().parents[1]
MODEL = "sea"
POOL = 20_000  # distinct SEA rows; requests cycle through them
BURST, BURST_ROUNDS = 50_000, 5  # an echo burst lasts under a second: one alone varied 2x
LATENCY_RATE, LATENCY_ROUNDS, LATENCY_S = 1_000, 3, 10
STEP_S = float(os.environ.get("BENCH_STACK_STEP_S", "60"))
FIRST_RATE = 500
LAG_S = 2.0  # a group keeps up when its lag stays within this many seconds of its input ...
GROWTH = 0.05  # ... and grows by less than this share of its input rate (a short step hides a slow leak)
LAG_EVERY_S = 2.0
FEEDBACK_DELAY_S = 0.5
IDLE_S = 15  # the stack with no traffic: what polling alone costs
ENDURANCE_S, WINDOW_S = float(os.environ.get("BENCH_STACK_ENDURANCE_S", "240")), 30
ECHO = ("echo.requests", "echo.responses")


def groups(topics: Topics) -> dict[str, list[str]]:
    """The consumer groups on the prediction and data paths, and what they read."""
    return {
        "inference": [topics.predictions_requests],
        "monitor": [topics.predictions_requests, topics.predictions_results, topics.predictions_feedback],
        "ingest": [topics.events_raw],
        "feature": [topics.events_validated],
        "training-store": [topics.features_computed],
    }


class Traffic:
    """Request payloads for `model` cycling through a pool of SEA rows, and the label of every
    request sent."""

    def __init__(self, model: str = MODEL, seed: int = 3) -> None:
        self.model = model
        self.pool = list(itertools.islice(datasets.sea(0, seed), POOL))
        self.labels: dict[bytes, int] = {}
        self.count = 0

    def requests(self, n: int, remember: bool = True) -> list[tuple[bytes, bytes]]:
        out = []
        for _ in range(n):
            x, y = self.pool[self.count % POOL]
            request_id = f"s{self.count}".encode()
            self.count += 1
            if remember:
                self.labels[request_id] = y
            body = {"request_id": request_id.decode(), "model": self.model, "features": x}
            out.append((request_id, orjson.dumps(body)))
        return out


async def feedback(sender: BatchSender, reader: Reader, traffic: Traffic, topic: str) -> None:
    """Forever: each answered request's label, `FEEDBACK_DELAY_S` after its result arrived."""
    assert reader.answered is not None
    while True:
        due = time.perf_counter() - FEEDBACK_DELAY_S
        out = []
        while reader.answered and reader.answered[0][1] <= due:
            key, _ = reader.answered.popleft()
            label = traffic.labels.pop(key, None)
            if label is not None:
                body = orjson.dumps({"request_id": key.decode(), "model": traffic.model, "label": label})
                out.append(Output(topic, key, body))
        if out:
            await sender.send(out)
        await asyncio.sleep(0.05)


class Cpu:
    """CPU seconds of a set of processes, from /proc."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.tick = os.sysconf("SC_CLK_TCK")
        self.mark()

    def _seconds(self, pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime

    def mark(self) -> None:
        self.at = time.perf_counter()
        self.used = {name: self._seconds(pid) for name, pid in self.pids.items()}

    def shares(self) -> dict[str, float]:
        """Percent of one core each process used since the last `mark`."""
        wall = time.perf_counter() - self.at
        return {name: 100 * (self._seconds(pid) - self.used[name]) / wall for name, pid in self.pids.items()}


class LagSampler:
    """Every group's lag every `every_s` seconds (at `time.monotonic()`), read on a thread of its
    own: its clients must not hold up the event loop that times the answers."""

    def __init__(self, bootstrap: str, watched: dict[str, list[str]], every_s: float = LAG_EVERY_S) -> None:
        self.bootstrap, self.watched, self.every_s = bootstrap, watched, every_s
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._sample()), daemon=True)

    async def _sample(self) -> None:
        while not self.stopping.is_set():
            self.samples.append((time.monotonic(), await group_lag(self.bootstrap, self.watched)))
            await asyncio.to_thread(self.stopping.wait, self.every_s)

    def __enter__(self) -> LagSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(30)


async def drain(bootstrap: str, watched: dict[str, list[str]], timeout: float = 120) -> dict[str, int]:
    """Wait until no group has more than a few hundred records left; the lags at the end."""
    deadline = time.monotonic() + timeout
    while True:
        lag = await group_lag(bootstrap, watched)
        if max(lag.values()) <= 500 or time.monotonic() > deadline:
            return lag
        await asyncio.sleep(2)


@dataclass
class Rig:
    """What a step drives and reads: the sender and the results' reader, the traffic, the stack's
    topics and broker, and the processes' CPU."""

    sender: BatchSender
    reader: Reader
    traffic: Traffic
    topics: Topics
    bootstrap: str
    cpu: Cpu
    step_s: float = STEP_S


async def step(rig: Rig, rate: float) -> dict[str, Any]:
    """Offer `rate` requests/s for `rig.step_s` seconds: kept up or not, lags, CPU shares, latency."""
    watched = groups(rig.topics)
    items = rig.traffic.requests(int(rate * rig.step_s))
    rig.reader.arrivals.clear()  # the earlier steps' answers: only slower dict and GC work now
    rig.cpu.mark()
    with LagSampler(rig.bootstrap, watched) as sampler:
        started = time.monotonic()
        sent = await offer(rig.sender, rig.topics.predictions_requests, items, rate)
        wall = time.monotonic() - started
    samples = sampler.samples
    shares = rig.cpu.shares()
    await rig.reader.wait_for(set(sent), 10)
    answered = sum(1 for k in sent if k in rig.reader.arrivals)
    second_half = [(at, lag) for at, lag in samples if at >= started + wall / 2] or samples[-1:]
    worst = {group: max(lag[group] for _, lag in second_half) for group in watched}
    growth = {group: growth_per_s([(at, lag[group]) for at, lag in second_half]) for group in watched}
    behind = sorted(
        group
        for group, inputs in watched.items()
        if worst[group] > LAG_S * rate * len(inputs) or growth[group] > GROWTH * rate * len(inputs)
    )
    kept_up = not behind and answered == len(sent) and wall < rig.step_s * 1.1
    print(
        f"  {rate:>7.0f}/s for {wall:.0f} s: {'kept up' if kept_up else 'fell behind'}"
        + (f" ({', '.join(behind)})" if behind else "")
        + f"; answered {answered}/{len(sent)}; worst lag {worst}; growth/s {growth}",
        flush=True,
    )
    return {
        "rate": rate,
        "kept_up": kept_up,
        "behind": behind,
        "answered": answered,
        "sent": len(sent),
        "wall_s": wall,
        "worst_lag_second_half": worst,
        "lag_growth_per_s": growth,
        "lag_samples": [lag for _, lag in samples],
        "cpu_percent": shares,
        "latency_ms": latency(sent, rig.reader),
    }


def growth_per_s(samples: list[tuple[float, int]]) -> int:
    """How fast a lag surely grew, records per second: the least-squares slope of (time, lag) less
    three of its standard errors (a batching consumer's lag saws up and down), at least 0.

    >>> growth_per_s([(0.0, 100), (2.0, 300), (4.0, 500)]), growth_per_s([(0.0, 7)])
    (100, 0)
    >>> growth_per_s([(0.0, 0), (2.0, 800), (4.0, 0), (6.0, 900), (8.0, 100)])
    0
    """
    if len(samples) < 3:
        return 0
    times, lags = (np.array(column, dtype=float) for column in zip(*samples, strict=True))
    slope, intercept = np.polyfit(times, lags, 1)
    residuals = lags - (slope * times + intercept)
    spread = float(np.sum((times - times.mean()) ** 2))
    error = np.sqrt(np.sum(residuals**2) / (len(times) - 2) / spread) if spread else 0.0
    return max(0, round(float(slope - 3 * error)))


async def sustained(rig: Rig, ceiling: float, bisections: int = 2) -> tuple[float, list[dict[str, Any]]]:
    """The highest offered rate the closed loop kept up with, and every step."""
    steps: list[dict[str, Any]] = []

    async def kept_up(rate: float) -> bool:
        steps.append(await step(rig, rate))
        await drain(rig.bootstrap, groups(rig.topics))
        return steps[-1]["kept_up"]

    good, bad, rate = 0.0, 0.0, float(FIRST_RATE)
    while not bad and rate <= ceiling:  # double while it keeps up
        if await kept_up(rate):
            good, rate = rate, rate * 2
        else:
            bad = rate
    for _ in range(bisections if bad and good else 0):  # then halve the gap
        rate = round((good + bad) / 2, -1)
        good, bad = (rate, bad) if await kept_up(rate) else (good, rate)
    return good, steps


async def endurance(rig: Rig, broker: int) -> list[dict[str, float]]:
    """Latency and the broker's CPU share per `WINDOW_S` window at `LATENCY_RATE` requests/s."""
    windows = []
    for _ in range(int(ENDURANCE_S // WINDOW_S)):
        items = rig.traffic.requests(int(LATENCY_RATE * WINDOW_S))
        rig.reader.arrivals.clear()
        cpu = Cpu({"broker": broker})
        sent = await offer(rig.sender, rig.topics.predictions_requests, items, LATENCY_RATE)
        share = cpu.shares()["broker"]
        await rig.reader.wait_for(set(sent), 30)
        windows.append({**latency(sent, rig.reader), "broker_cpu_percent": share})
        print(f"  endurance window {len(windows)}: {windows[-1]}", flush=True)
    return windows


async def champion(bootstrap: str, topics: Topics, traffic: Traffic) -> None:
    """Train and promote a first version of `traffic.model` on 5,000 rows of its pool."""
    now = datetime.now(UTC) - timedelta(hours=1)
    first = [(x, y, now + timedelta(milliseconds=i)) for i, (x, y) in enumerate(traffic.pool[:5_000])]
    producer = make_producer(bootstrap)
    await producer.start()
    watcher = await Watcher.tail(bootstrap, topics)
    try:
        await live.first_model(producer, watcher, topics, traffic.model, first, uuid.uuid4().hex[:8], 180)
    finally:
        await watcher.close()
        await producer.stop()


@contextlib.asynccontextmanager
async def labelled_traffic(
    stack: localstack.Stack, traffic: Traffic, step_s: float = STEP_S
) -> AsyncIterator[Rig]:
    """A rig sending requests to the stack and their labels as feedback, `FEEDBACK_DELAY_S` after
    each result."""
    topics = Topics()
    sender = await BatchSender.connect(stack.bootstrap, "bench-stack")
    reader = Reader(stack.bootstrap, topics.predictions_results)
    reader.answered = deque()
    await reader.start()
    labels = asyncio.create_task(feedback(sender, reader, traffic, topics.predictions_feedback))
    cpu = Cpu({**stack.pids, "load generator": os.getpid()})
    try:
        yield Rig(sender, reader, traffic, topics, stack.bootstrap, cpu, step_s)
    finally:
        labels.cancel()
        await asyncio.gather(labels, return_exceptions=True)
        await sender.stop()
        await reader.stop()


async def run(stack: localstack.Stack) -> dict[str, Any]:
    echo = None
    try:
        bootstrap, topics = stack.bootstrap, Topics()
        await ensure_topics(ServiceSettings(kafka_bootstrap=bootstrap), list(ECHO))
        env = {**os.environ, "DRIFTLOOP_KAFKA_BOOTSTRAP": bootstrap, "DRIFTLOOP_LOG_LEVEL": "WARNING"}
        echo = subprocess.Popen(
            [sys.executable, "-m", "bench.echo", *ECHO], env=env, stdout=subprocess.PIPE, text=True
        )
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        traffic = Traffic()
        await champion(bootstrap, topics, traffic)
        await asyncio.sleep(4)  # the echo's group has joined (a join takes 3 s on tansu)
        echo_reader = Reader(bootstrap, ECHO[1])
        await echo_reader.start()
        async with labelled_traffic(stack, traffic) as rig:
            sender, reader, cpu = rig.sender, rig.reader, rig.cpu
            cpu.pids["echo"] = echo.pid
            cpu.mark()
            figures: dict[str, Any] = {"processes": sorted(cpu.pids)}
            await asyncio.sleep(IDLE_S)
            figures["idle_cpu_percent"] = cpu.shares()
            await burst(sender, echo_reader, ECHO[0], traffic.requests(2_000, remember=False))
            await burst(sender, reader, topics.predictions_requests, traffic.requests(2_000))
            await drain(bootstrap, groups(topics))
            print(f"{BURST_ROUNDS} rounds of bursts of {BURST:,} requests ...", flush=True)
            figures["burst_rounds"] = []
            for _ in range(BURST_ROUNDS):  # echo and stack alternate: both see the same machine
                echo_per_s = await burst(
                    sender, echo_reader, ECHO[0], traffic.requests(BURST, remember=False)
                )
                cpu.mark()
                stack_per_s = await burst(
                    sender, reader, topics.predictions_requests, traffic.requests(BURST)
                )
                figures["burst_cpu_percent"] = cpu.shares()
                figures["burst_rounds"].append((echo_per_s, stack_per_s))
                figures["burst_drained_lag"] = await drain(bootstrap, groups(topics))
            figures["echo_per_s"] = float(np.median([e for e, _ in figures["burst_rounds"]]))
            figures["stack_per_s"] = float(np.median([s for _, s in figures["burst_rounds"]]))
            print(f"latency at {LATENCY_RATE}/s ...", flush=True)
            echo_sent: dict[bytes, float] = {}
            stack_sent: dict[bytes, float] = {}
            for _ in range(LATENCY_ROUNDS):
                n = LATENCY_RATE * LATENCY_S
                echo_sent.update(
                    (
                        await offered_load(
                            sender, echo_reader, ECHO[0], traffic.requests(n, False), LATENCY_RATE
                        )
                    )[0]
                )
                cpu.mark()
                stack_sent.update(
                    (
                        await offered_load(
                            sender, reader, topics.predictions_requests, traffic.requests(n), LATENCY_RATE
                        )
                    )[0]
                )
                figures["latency_cpu_percent"] = cpu.shares()
            figures["echo_latency_ms"] = latency(echo_sent, echo_reader)
            figures["stack_latency_ms"] = latency(stack_sent, reader)
            await drain(bootstrap, groups(topics))
            print(f"sustained closed-loop rate, steps of {STEP_S:.0f} s ...", flush=True)
            figures["sustained_per_s"], figures["steps"] = await sustained(rig, ceiling=figures["echo_per_s"])
            print(f"endurance at {LATENCY_RATE}/s for {ENDURANCE_S:.0f} s ...", flush=True)
            figures["endurance"] = await endurance(rig, stack.pids["broker"])
        await echo_reader.stop()
        return figures
    finally:
        if echo is not None:
            echo.terminate()
            echo.wait(10)


def main() -> int:
    gc.disable()  # millions of answer times: a full collection would stall the clock that times them
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-stack-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        shutil.copy(ROOT / "models" / f"{MODEL}.yaml", models)
        stack = localstack.up(Path(tmp) / "run", models)
        try:
            f = asyncio.run(run(stack))
        finally:
            localstack.down(Path(tmp) / "run")
    passed = [s for s in f["steps"] if s["kept_up"]]
    top = max(passed, key=lambda s: s["rate"]) if passed else None
    result = {
        "echo_per_s": round(f["echo_per_s"]),
        "stack_per_s": round(f["stack_per_s"]),
        "ratio": round(f["stack_per_s"] / f["echo_per_s"], 3),
        "burst_rounds": [
            {"echo": round(e), "stack": round(x), "ratio": round(x / e, 3)} for e, x in f["burst_rounds"]
        ],
        "sustained_closed_loop_per_s": f["sustained_per_s"],
        "sustained_ratio": round(f["sustained_per_s"] / f["echo_per_s"], 3),
        "p50_ms_1k": round(f["stack_latency_ms"]["p50"], 2),
        "p99_ms_1k": round(f["stack_latency_ms"]["p99"], 2),
        "echo_p50_ms_1k": round(f["echo_latency_ms"]["p50"], 2),
        "echo_p99_ms_1k": round(f["echo_latency_ms"]["p99"], 2),
        "added_p99_ms_1k": round(f["stack_latency_ms"]["p99"] - f["echo_latency_ms"]["p99"], 2),
        "step_s": STEP_S,
        "lag_bound_s": LAG_S,
        "feedback_delay_s": FEEDBACK_DELAY_S,
        "fetch_max_wait_ms": ServiceSettings().kafka_fetch_max_wait_ms,
        "cpu_percent_idle": f["idle_cpu_percent"],
        "cpu_percent_at_sustained": top["cpu_percent"] if top else None,
        "cpu_percent_burst": f["burst_cpu_percent"],
        "cpu_percent_1k": f["latency_cpu_percent"],
        "steps": f["steps"],
        "endurance_windows": f["endurance"],
    }
    print()
    print(
        table(
            "bench-stack, one run (goals: ratio >= 0.5, added p99 at 1k/s <= 10 ms)",
            [
                *(
                    (k, v)
                    for k, v in result.items()
                    if k not in ("steps", "endurance_windows", "burst_rounds") and not k.startswith("cpu_")
                ),
                (
                    "burst rounds: echo / stack / ratio",
                    " | ".join(f"{r['echo']} / {r['stack']} / {r['ratio']}" for r in result["burst_rounds"]),
                ),
            ],
        )
    )
    for title, shares in (
        ("CPU, % of one core, no traffic", result["cpu_percent_idle"]),
        (
            f"CPU, % of one core, at {f['sustained_per_s']:.0f} req/s sustained",
            result["cpu_percent_at_sustained"],
        ),
        ("CPU, % of one core, burst", result["cpu_percent_burst"]),
        (f"CPU, % of one core, {LATENCY_RATE} req/s", result["cpu_percent_1k"]),
    ):
        if shares:
            print()
            print(table(title, sorted(((k, round(v, 1)) for k, v in shares.items()), key=lambda kv: -kv[1])))
    print()
    print(
        table(
            f"endurance at {LATENCY_RATE} req/s, per {WINDOW_S} s window: p50 / p99 ms, broker CPU %",
            [
                (f"window {i + 1}", f"{w['p50']:.1f} / {w['p99']:.1f}, {w['broker_cpu_percent']:.0f}%")
                for i, w in enumerate(f["endurance"])
            ],
        )
    )
    print(f"\nwrote {write('stack', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
