"""`make bench-faults`: faults against the whole local stack (broker, Redis, six services as
processes) while traffic flows, one row per fault.

Traffic, all through the broker: RATE prediction requests/s (a tenth of them by entity only, their
features read from the online store), RATE labelled observations/s into `events.raw`, and the label
of every request half a second after it. A SEA champion is trained first. Then, in turn:
`kill -9` and SIGTERM of each service (then started again), Redis down 15 s, the broker down 15 s
(tansu keeps topics in memory: they are created again, empty), a promoted version whose artifact is
corrupted, and a backlog of 100k requests while inference is stopped.

Per fault, over the requests and events sent from its start to the next fault's: `lost` (never
answered / never became a feature row), `duplicates` (answered more than once; `different` counts
the repeats that were not identical), `recovery_s` (see `recovery` in each row), and the highest
RSS of any service process in that time. Requests the broker never acknowledged (during its
outage) are counted as `refused`, not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
from aiokafka import AIOKafkaConsumer

from bench.common import table, write
from driftloop import datasets, localstack
from driftloop.artifacts import ArtifactStore
from driftloop.contracts import ModelPromoted, TrainModel
from driftloop.fastpath import BatchSender, Output
from driftloop.kafka import TruncationWatch, tail_from_end
from driftloop.settings import Topics

ROOT = Path(__file__).resolve().parents[1]
RATE = int(os.environ.get("DRIFTLOOP_BENCH_FAULTS_RATE", "2000"))  # requests/s, and events/s
TICKS_PER_S = 50
ENTITIES = 200
SETTLE_S = 8.0  # traffic after each fault is over, before the next
IN_FLIGHT_S = 3.0  # what was sent this long before a fault counts as the fault's
OUTAGE_S = 15.0
BACKLOG = int(os.environ.get("DRIFTLOOP_BENCH_FAULTS_BACKLOG", "100000"))
SERVICES = localstack.SERVICES
topics = Topics()


@dataclass
class Traffic:
    """What was sent (acknowledged by the broker) and what came back, with times."""

    requests: dict[str, float] = field(default_factory=dict)
    entity_requests: set[str] = field(default_factory=set)
    events: dict[str, float] = field(default_factory=dict)
    refused: list[tuple[float, int]] = field(default_factory=list)  # (when, requests not sent)
    results: dict[str, list[bytes]] = field(default_factory=dict)
    answered_at: dict[str, float] = field(default_factory=dict)
    served_at: dict[str, float] = field(default_factory=dict)  # answered without an error
    errors: dict[str, str] = field(default_factory=dict)  # the first error result's kind
    rows: dict[str, int] = field(default_factory=dict)
    feedback: dict[str, int] = field(default_factory=dict)  # the monitor's labelled rows, by id
    row_at: dict[str, float] = field(default_factory=dict)


class Load:
    def __init__(self, stack: localstack.Stack, traffic: Traffic) -> None:
        self.stack, self.traffic = stack, traffic
        self.rows = itertools.cycle(list(itertools.islice(datasets.sea(0, seed=5), 5000)))
        self.counter = itertools.count()
        self.labels: list[tuple[float, bytes]] = []
        self.paused = False

    async def run(self, sender: BatchSender) -> None:
        per_tick = max(1, RATE // TICKS_PER_S)
        started = time.monotonic()
        blocked_s = 0.0  # how long the last send waited before the broker refused it
        tick = 0
        while True:
            late = time.monotonic() - (started + tick / TICKS_PER_S)
            if blocked_s and late > 0:  # the ticks it blocked are refused, not made up in a burst
                self.traffic.refused.append((time.monotonic(), per_tick * int(blocked_s * TICKS_PER_S)))
                started += late
                late, blocked_s = 0.0, 0.0
            await asyncio.sleep(max(0.0, -late))
            # behind schedule (the acknowledgements of one send take longer than a tick on a busy
            # host), the ticks due go out together, up to a second's worth: the rate holds
            due = min(TICKS_PER_S, 1 + int(max(0.0, late) * TICKS_PER_S))
            tick += due
            if self.paused:
                continue
            now = time.monotonic()
            outputs, requests, entity, events = [], [], [], []
            for _ in range(per_tick * due):
                k = next(self.counter)
                features, label = next(self.rows)
                request_id, event_id, owner = f"r{k}", f"ev{k}", f"e{k % ENTITIES}"
                body: dict = {"request_id": request_id, "model": "sea", "features": features}
                if k % 10 == 0 and k > 10 * ENTITIES:
                    body = {"request_id": request_id, "model": "sea", "features": {}, "entity_id": owner}
                    entity.append(request_id)
                outputs.append(Output(topics.predictions_requests, request_id.encode(), orjson.dumps(body)))
                requests.append(request_id)
                event = {"event_id": event_id, "model": "sea", "entity_id": owner, "features": features,
                         "label": label}  # fmt: skip
                outputs.append(Output(topics.events_raw, owner.encode(), orjson.dumps(event)))
                events.append(event_id)
                feedback = {"request_id": request_id, "model": "sea", "label": label}
                self.labels.append((now + 0.5, orjson.dumps(feedback)))
            while self.labels and self.labels[0][0] <= now:
                outputs.append(Output(topics.predictions_feedback, None, self.labels.pop(0)[1]))
            try:
                await asyncio.wait_for(sender.send(outputs), timeout=5)
            except Exception:
                self.traffic.refused.append((now, len(requests)))
                blocked_s = time.monotonic() - now
                continue
            self.traffic.requests.update(dict.fromkeys(requests, now))
            self.traffic.entity_requests.update(entity)
            self.traffic.events.update(dict.fromkeys(events, now))


async def read(
    stack: localstack.Stack,
    topic: str,
    on: Callable[[bytes], None],
    read_all_at: dict[str, float] | None = None,
) -> None:
    """Follow a topic from its end; after a broker restart, the new (empty) topic from its start.
    `read_all_at[topic]`: the latest wall-clock time (ms) at which the broker answered a fetch of
    every partition with an end this reader had read up to (what was written before is read)."""
    consumer = await tail_from_end(stack.bootstrap, topic)
    watch = TruncationWatch(consumer)
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            await watch.fetched(sum(map(len, batches.values())))
            for records in batches.values():
                for record in records:
                    on(record.value or b"")
            if read_all_at is not None and (at := await _read_all(consumer)) is not None:
                read_all_at[topic] = at
    finally:
        await consumer.stop()


async def _read_all(consumer: AIOKafkaConsumer) -> float | None:
    """When (ms) the oldest of the last fetch answers came, if the records up to every partition's
    end then have been handed out; None while any is behind or unknown."""
    oldest = float("inf")
    for tp in consumer.assignment():
        end, answered = consumer.highwater(tp), consumer.last_poll_timestamp(tp)
        if end is None or answered is None or await consumer.position(tp) < end:
            return None
        oldest = min(oldest, answered)
    return oldest if oldest != float("inf") else None


class RSS:
    """Peak resident memory of the service processes, sampled every half second."""

    def __init__(self, stack: localstack.Stack) -> None:
        self.stack = stack
        self.samples: list[tuple[float, float]] = []  # (time, highest service RSS in MB)

    async def run(self) -> None:
        while True:
            peak = 0.0
            for service in SERVICES:
                pid = self.stack.pids.get(service)
                with contextlib.suppress(OSError, ValueError, TypeError):
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            peak = max(peak, int(line.split()[1]) / 1024)
            self.samples.append((time.monotonic(), peak))
            await asyncio.sleep(0.5)

    def peak(self, since: float, until: float) -> float:
        return max((mb for t, mb in self.samples if since <= t < until), default=0.0)


async def until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def first_after(
    sent: dict[str, float], at: dict[str, float], since: float, ok: Callable[[str], bool]
) -> float | None:
    """When the first item sent after `since` came back (and passed `ok`)."""
    times = [at[k] for k, t in sent.items() if t >= since and k in at and ok(k)]
    return min(times) if times else None


@dataclass
class Fault:
    name: str
    recovery: str  # what recovery_s measures
    started: float = 0.0
    back: float = 0.0  # the fault is over (process started again, Redis or broker back)
    ready_s: float | None = None
    stop_s: float | None = None
    extra: dict = field(default_factory=dict)


class Bench:
    def __init__(self, stack: localstack.Stack, models: Path) -> None:
        self.stack, self.models = stack, models
        self.traffic = Traffic()
        self.load = Load(stack, self.traffic)
        self.rss = RSS(stack)
        self.monitor_counted = 0.0
        self.read_all_at: dict[str, float] = {}  # by topic (`read`)

    def _on_result(self, value: bytes) -> None:
        result = orjson.loads(value)
        request_id = result.get("request_id", "")
        copies = self.traffic.results.setdefault(request_id, [])
        copies.append(orjson.dumps({k: result.get(k) for k in ("model_version", "prediction", "error")}))
        self.traffic.answered_at.setdefault(request_id, time.monotonic())
        if result.get("error") is None:
            self.traffic.served_at.setdefault(request_id, time.monotonic())
        else:
            self.traffic.errors.setdefault(request_id, str(result["error"]).split(":")[0])

    def _on_raw(self, value: bytes) -> None:
        event_id = orjson.loads(value).get("event_id", "")
        if event_id.startswith("feedback:"):
            self.traffic.feedback[event_id] = self.traffic.feedback.get(event_id, 0) + 1

    def _monitor_labelled(self) -> float:
        """The monitor's `driftloop_monitor_labelled_total`, summed (it starts at 0 in each process)."""
        try:
            metrics = httpx.get(f"{self.stack.url('monitor')}/metrics", timeout=5).text
        except httpx.HTTPError:
            return 0.0
        return sum(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("driftloop_monitor_labelled_total{")
        )

    def _on_row(self, value: bytes) -> None:
        event_id = orjson.loads(value).get("event_id", "")
        self.traffic.rows[event_id] = self.traffic.rows.get(event_id, 0) + 1
        self.traffic.row_at.setdefault(event_id, time.monotonic())

    async def _respawn(self, name: str) -> float:
        started = time.monotonic()
        await asyncio.to_thread(localstack.respawn, self.stack, name, self.models)
        return time.monotonic() - started

    async def _signal(self, name: str, sig: signal.Signals) -> float:
        if name == "monitor":  # what this process counted (a kill may lose the last second's)
            self.monitor_counted += await asyncio.to_thread(self._monitor_labelled)
        pid = self.stack.pids[name]
        started = time.monotonic()
        os.kill(pid, sig)
        while localstack.alive(pid):
            await asyncio.sleep(0.02)
        return time.monotonic() - started

    async def kill(self, fault: Fault, service: str, sig: signal.Signals) -> None:
        fault.stop_s = await self._signal(service, sig)
        fault.ready_s = await self._respawn(service)

    async def outage(self, fault: Fault, part: str) -> None:
        await self._signal(part, signal.SIGKILL)
        await asyncio.sleep(OUTAGE_S)
        await self._respawn(part)

    async def corrupt_artifact(self, fault: Fault) -> None:
        """A promoted version whose artifact is damaged on disk: inference must keep serving."""
        root = self.stack.run_dir / "var" / "objects"
        store = ArtifactStore.at(root)
        good = self.traffic.results
        serving = max((orjson.loads(c[0])["model_version"] for c in list(good.values())[-50:]), default=1)
        artifact = await store.put(b"not an onnx model" + uuid.uuid4().bytes)
        (root / "artifacts" / artifact.uri).write_bytes(b"corrupted after its hash was taken")
        promoted = ModelPromoted(model="sea", version=serving + 100, artifact=artifact, classes=[0, 1],
                                 feature_names=["x0", "x1", "x2"], reason="bench-faults")  # fmt: skip
        sender = await BatchSender.connect(self.stack.bootstrap, "bench-faults-lifecycle")
        await sender.send([Output(topics.models_lifecycle, None, promoted.model_dump_json().encode())])
        await sender.stop()
        await asyncio.sleep(2)
        metrics = httpx.get(f"{self.stack.url('inference')}/metrics").text
        fault.extra["load_failures_metric"] = sum(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("driftloop_inference_model_load_failures_total{")
        )
        fault.extra["refused_version"] = serving + 100

    async def backlog(self, fault: Fault) -> None:
        """Inference stopped, BACKLOG requests queued, inference started: it catches up."""
        fault.stop_s = await self._signal("inference", signal.SIGTERM)
        sender = await BatchSender.connect(self.stack.bootstrap, "bench-faults-backlog")
        ids = [f"b{i}" for i in range(BACKLOG)]
        sent_at = time.monotonic()
        for start in range(0, BACKLOG, 5000):
            chunk = ids[start : start + 5000]
            await sender.send([Output(topics.predictions_requests, i.encode(),
                                      orjson.dumps({"request_id": i, "model": "sea",
                                                    "features": {"x0": 1.0, "x1": 2.0, "x2": 3.0}}))
                               for i in chunk])  # fmt: skip
        await sender.stop()
        self.traffic.requests.update(dict.fromkeys(ids, sent_at))
        started = time.monotonic()
        fault.ready_s = await self._respawn("inference")
        caught_up = await until(lambda: all(i in self.traffic.answered_at for i in ids[-100:]), 300)
        fault.extra["catch_up_s"] = round(time.monotonic() - started, 2) if caught_up else None
        fault.extra["backlog"] = BACKLOG

    async def bootstrap(self, sender: BatchSender) -> None:
        rows = list(itertools.islice(datasets.sea(0, seed=3), 3000))
        outputs = [
            Output(topics.events_raw, None, orjson.dumps(
                {"event_id": f"boot{i}", "model": "sea", "features": x, "label": y}))
            for i, (x, y) in enumerate(rows)
        ]  # fmt: skip
        await sender.send(outputs)
        command = TrainModel(command_id=uuid.uuid4().hex, model="sea", reason="bench", min_rows=2000)
        await sender.send([Output(topics.training_requests, None, command.model_dump_json().encode())])

        def served() -> bool:
            return any(orjson.loads(c[0]).get("model_version", 0) >= 1 for c in self.traffic.results.values())

        if not await until(served, 180):
            sys.exit("bench-faults: no champion served within 180 s")

    async def run(self) -> list[dict]:
        sender = await BatchSender.connect(self.stack.bootstrap, "bench-faults")
        tasks = [
            asyncio.create_task(read(self.stack, topics.predictions_results, self._on_result)),
            asyncio.create_task(read(self.stack, topics.features_computed, self._on_row)),
            asyncio.create_task(read(self.stack, topics.events_raw, self._on_raw, self.read_all_at)),
            asyncio.create_task(self.rss.run()),
            asyncio.create_task(self.load.run(sender)),
        ]
        await asyncio.sleep(3)
        await self.bootstrap(sender)
        await asyncio.sleep(SETTLE_S)
        plan: list[tuple[Fault, Callable[[Fault], Awaitable[None]]]] = []
        for service in SERVICES:
            plan.append((Fault(f"kill -9 {service}", _recovery(service)),
                         lambda f, s=service: self.kill(f, s, signal.SIGKILL)))  # fmt: skip
        for service in SERVICES:
            plan.append((Fault(f"SIGTERM {service}", _recovery(service)),
                         lambda f, s=service: self.kill(f, s, signal.SIGTERM)))  # fmt: skip
        plan.append((Fault("Redis down 15 s", "Redis back → first entity request served"),
                     lambda f: self.outage(f, "redis")))  # fmt: skip
        plan.append((Fault("corrupted artifact promoted", "old version keeps serving: first result after"),
                     self.corrupt_artifact))  # fmt: skip
        plan.append((Fault(f"backlog of {BACKLOG:,} requests", "inference started → backlog answered"),
                     self.backlog))  # fmt: skip
        # last: tansu keeps topics in memory, so the lifecycle topic is gone after this one
        plan.append((Fault("broker down 15 s", "broker back → first result"),
                     lambda f: self.outage(f, "broker")))  # fmt: skip
        only = os.environ.get("DRIFTLOOP_BENCH_FAULTS_ONLY")  # e.g. "broker" or "kill -9,Redis"
        plan = [(f, act) for f, act in plan if not only or any(o in f.name for o in only.split(","))]
        try:
            for fault, act in plan:
                print(f"  {fault.name} ...", flush=True)
                fault.started = time.monotonic()
                await act(fault)
                fault.back = time.monotonic()
                await asyncio.sleep(SETTLE_S)
            self.load.paused = True
            end = time.monotonic()
            await until(lambda: all(k in self.traffic.answered_at for k in self.traffic.requests), 60)
            await until(lambda: all(k in self.traffic.row_at for k in self.traffic.events), 60)
            await asyncio.sleep(3)  # the last labels are joined
            counted_at = time.time() * 1000
            self.monitor_counted += await asyncio.to_thread(self._monitor_labelled)
            # every labelled row the monitor sent before that count (its counts follow the rows'
            # acknowledgement) is read before the readers stop: a fetch answered after the count
            # (a second later, for the clocks of the answer and of this process) found no more
            raw = topics.events_raw
            await until(lambda: self.read_all_at.get(raw, 0.0) > counted_at + 1000, 60)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await sender.stop()
        return [self.figures(f, nxt.started if nxt else end) for f, nxt in _pairs([f for f, _ in plan])]

    def figures(self, fault: Fault, until_t: float) -> dict:
        t = self.traffic
        since, until_t = fault.started - IN_FLIGHT_S, until_t - IN_FLIGHT_S  # in flight: the fault's
        window = {k: s for k, s in t.requests.items() if since <= s < until_t}
        events = {k: s for k, s in t.events.items() if since <= s < until_t}
        lost = sum(1 for k in window if k not in t.results)
        lost_events = sum(1 for k in events if k not in t.row_at)
        copies = [t.results[k] for k in window if len(t.results.get(k, [])) > 1]
        differing = [k for k in window if len(set(t.results.get(k, []))) > 1]
        answered, ok = t.answered_at, t.served_at
        first: float | None  # when the first item sent after the fault came back
        if fault.name.startswith("Redis"):
            first = first_after(t.requests, ok, fault.back, lambda k: k in t.entity_requests)
            recovery = None if first is None else first - fault.back
        elif fault.name.startswith("broker"):
            first = first_after(t.requests, answered, fault.back, lambda k: True)
            recovery = None if first is None else first - fault.back
        elif fault.name.startswith("backlog"):
            first, recovery = None, fault.extra.get("catch_up_s")
        elif any(fault.name.endswith(s) for s in ("ingest", "feature")):
            first = first_after(t.events, t.row_at, fault.started, lambda k: True)
            recovery = None if first is None else first - fault.started
        elif fault.name.endswith("inference") or fault.name.startswith("corrupted"):
            first = first_after(t.requests, answered, fault.started, lambda k: True)
            recovery = None if first is None else first - fault.started
        else:
            first, recovery = None, (fault.stop_s or 0) + (fault.ready_s or 0)
        backlog = fault.name.startswith("backlog")
        load = {"backlog": BACKLOG} if backlog else {"requests_per_s": RATE, "events_per_s": RATE}

        def lost_since(moment: float) -> int:
            return sum(1 for k, at in window.items() if at >= moment and k not in t.results) + sum(
                1 for k, at in events.items() if at >= moment and k not in t.row_at
            )

        entity_errors = sum(1 for k in window if k in t.entity_requests and k in t.results and k not in ok)
        return {
            "name": fault.name,
            "load": load,
            "requests": len(window),
            "events": len(events),
            # the load actually sent in the fault's window (the target is RATE; a saturated host
            # falls behind and makes up in bursts)
            "sent_requests_per_s": round(len(window) / (until_t - since)),
            "lost": lost + lost_events,
            "lost_requests": lost,
            "lost_events": lost_events,
            # of the lost, those sent once the fault was over (process back, Redis or broker up)
            "refused": sum(n for at, n in t.refused if since <= at < until_t),  # not sent: broker down
            "requests_after_fault": sum(1 for at in window.values() if at >= fault.back),
            "lost_after_fault": lost_since(fault.back),
            # of those, the ones sent once the first item sent after the fault had come back
            "lost_after_recovery": None if first is None else lost_since(first),
            # the first few lost, with when each was sent (seconds after the fault was over)
            "lost_examples": {
                k: round(at - fault.back, 2)
                for k, at in sorted(
                    [
                        *((k, at) for k, at in window.items() if k not in t.results),
                        *((k, at) for k, at in events.items() if k not in t.row_at),
                    ],
                    key=lambda x: x[1],
                )[:20]
            },
            "duplicates": sum(len(c) - 1 for c in copies),
            "different": sum(len(set(c)) - 1 for c in copies),
            # an entity request answered twice may see newer stored features the second time
            "different_entity_requests": sum(1 for k in differing if k in t.entity_requests),
            "different_examples": {k: [orjson.loads(c) for c in t.results[k]] for k in differing[:3]},
            "error_results": sum(1 for k in window if k in t.results and k not in ok),
            "errors": dict(Counter(t.errors[k] for k in window if k in t.errors)),
            "entity_errors": entity_errors,
            "stop_s": None if fault.stop_s is None else round(fault.stop_s, 2),
            "recovery_s": None if recovery is None else round(recovery, 2),
            "recovery": fault.recovery,
            "rss_peak_mb": round(self.rss.peak(fault.started, until_t), 1),
            **fault.extra,
        }


def _recovery(service: str) -> str:
    if service in ("ingest", "feature"):
        return "fault → first feature row of an event sent after it"
    if service == "inference":
        return "fault → first result of a request sent after it"
    return "fault → the new process is ready"


def _pairs(faults: list[Fault]) -> list[tuple[Fault, Fault | None]]:
    return list(zip(faults, [*faults[1:], None], strict=True))


def main() -> None:
    keep = os.environ.get("DRIFTLOOP_BENCH_FAULTS_KEEP")  # a directory: keep the run (logs) there
    with tempfile.TemporaryDirectory() if not keep else contextlib.nullcontext(keep) as tmp:
        models = Path(tmp) / "models"
        models.mkdir(parents=True)
        (models / "sea.yaml").write_text((ROOT / "models" / "sea.yaml").read_text())
        run_dir = Path(tmp) / "run"
        print(f"bench-faults: starting the local stack in {run_dir}; {RATE} requests/s and {RATE} events/s")
        stack = localstack.up(run_dir, models)
        bench = Bench(stack, models)
        try:
            faults = asyncio.run(bench.run())
        finally:
            localstack.down(run_dir)
    refused = sum(n for _, n in bench.traffic.refused)
    result = {
        "faults": faults,
        "lost_total": sum(f["lost"] for f in faults),
        "duplicates_total": sum(f["duplicates"] for f in faults),
        "different_total": sum(f["different"] for f in faults),
        "refused_by_broker": refused,
        "requests_total": len(bench.traffic.requests),
        "events_total": len(bench.traffic.events),
        "rate_per_s": RATE,
        # labels the monitor joined and counted, summed over its processes, next to the distinct
        # labelled rows it published: a redelivery after a kill must not count a label twice
        "monitor_labelled_counted": bench.monitor_counted,
        "monitor_feedback_rows": len(bench.traffic.feedback),
        "monitor_feedback_repeats": sum(n - 1 for n in bench.traffic.feedback.values()),
    }
    rows = [
        (f["name"], f"lost {f['lost']}, dup {f['duplicates']} (diff {f['different']}), "
         f"errors {f['error_results']}, recovery {f['recovery_s']} s, stop {f['stop_s']} s, "
         f"RSS peak {f['rss_peak_mb']} MB")
        for f in faults
    ]  # fmt: skip
    rows += [
        ("lost total", result["lost_total"]),
        ("not acknowledged by the broker", refused),
        ("monitor: labels counted / labelled rows (repeats)",
         f"{result['monitor_labelled_counted']:.0f} / {result['monitor_feedback_rows']} "
         f"({result['monitor_feedback_repeats']})"),
    ]  # fmt: skip
    print(table("bench-faults (one run)", rows))
    print(f"written {write('faults', result)}")


if __name__ == "__main__":
    main()
