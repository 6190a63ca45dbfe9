"""`make bench-data`: the data path (ingest → feature → Redis online store + Parquet offline store)
against the broker's ceiling, in one run.

1. ceiling: the batched aiokafka echo of bench-inference (same loop, settings and payload sizes);
2. a burst of labelled observations into `events.raw`, through the real ingest and feature
   processes (validation, dedup, offline store, per-entity aggregates, online store): feature rows/s
   on `features.computed`; 1 and 2 alternate for three rounds (both see the same machine) and the
   medians are compared (a single echo burst lasts under a second: its figure varied 58k-81k/s);
3. event latency `events.raw` → `features.computed` at a fixed 1,000 events/s, next to the echo's at
   the same load (rounds alternate);
4. offline store bytes per row (Parquet files of the run / rows indexed), online keys written.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
from aiokafka import ConsumerRecord

from bench.common import batch_totals, start_broker_and_redis, stop_processes, table, wait_ready, write
from bench.traffic import Reader, burst, latency, offered_load
from driftloop.fastpath import BatchSender
from driftloop.kafka import ensure_topics
from driftloop.localstack import free_port
from driftloop.settings import ServiceSettings, Topics
from driftloop.specbook import apply_specs
from driftloop.store import RowStore

FEATURES = [f"f{i}" for i in range(12)]
ENTITIES = 1000
BURST, BURST_ROUNDS = 50_000, 3
LATENCY_ROUNDS, LATENCY_SECONDS, RATE = 3, 5, 1000
SPEC = "\n".join(
    [
        "name: benchdata",
        "features:",
        *[f"  - {{name: {name}, type: numeric, min: -100, max: 100}}" for name in FEATURES],
        "aggregates:",
        "  - {name: f0_mean_10, stat: mean, of: f0, last_n: 10}",
        "  - {name: events_1h, stat: count, window_s: 3600}",
        "label: {classes: [0, 1]}",
        "algorithm: {name: logistic_regression}",
    ]
)


def observations(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    """(event id, JSON) of labelled observations spread over ENTITIES entities, 20 µs of event
    time apart (distinct, as a stream's are)."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, len(FEATURES))).round(4)
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        event_id = f"{seed}-{i}"
        body = {
            "event_id": event_id,
            "model": "benchdata",
            "entity_id": f"u{int(rng.integers(ENTITIES))}",
            "features": dict(zip(FEATURES, values[i].tolist(), strict=True)),
            "label": int(i % 2),
            "event_time": (now + timedelta(microseconds=20 * i)).isoformat(),
        }
        out.append((event_id.encode(), orjson.dumps(body)))
    return out


_EVENT_ID = re.compile(rb'\{"schema_version":\d+,"event_id":"([^"\\]*)"')


class RowReader(Reader):
    """Arrivals on `features.computed`, keyed by the row's event id (feature rows are not keyed)."""

    def key(self, record: ConsumerRecord) -> bytes:
        """The row's event id: read from the front of the JSON (`feature_row_json` writes it
        second), which costs far less than parsing the whole row; parsed when it is not there."""
        value = record.value or b"{}"
        found = _EVENT_ID.match(value)
        return found.group(1) if found else orjson.loads(value).get("event_id", "").encode()


async def run(tmp: Path) -> dict:
    procs, bootstrap, redis_port = start_broker_and_redis(tmp)
    topics = Topics()
    await ensure_topics(
        ServiceSettings(kafka_bootstrap=bootstrap), [*topics.all(), "echo.requests", "echo.responses"]
    )
    models = tmp / "models"
    models.mkdir()
    (models / "benchdata.yaml").write_text(SPEC)
    await apply_specs(ServiceSettings(kafka_bootstrap=bootstrap), models)
    env = {
        **os.environ,
        "DRIFTLOOP_KAFKA_BOOTSTRAP": bootstrap,
        "DRIFTLOOP_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "DRIFTLOOP_OFFLINE_DIR": str(tmp / "offline"),
        "DRIFTLOOP_LOG_LEVEL": "WARNING",
    }
    ports = {"ingest": free_port(), "feature": free_port()}
    for service, port in ports.items():
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", f"driftloop_{service}.app"],
                env={**env, "DRIFTLOOP_HTTP_PORT": str(port)},
            )
        )
    echo = subprocess.Popen(
        [sys.executable, "-m", "bench.echo", "echo.requests", "echo.responses"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    procs.append(echo)
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        for service, port in ports.items():
            wait_ready(port, service)
        await asyncio.sleep(4)  # the consumer groups have joined (a join takes 3 s on tansu)
        sender = await BatchSender.connect(bootstrap, "bench")
        echo_reader, rows_reader = (
            Reader(bootstrap, "echo.responses"),
            RowReader(bootstrap, topics.features_computed),
        )
        await echo_reader.start()
        await rows_reader.start()
        figures: dict = {}
        warm = observations(2000, seed=99)
        await burst(sender, echo_reader, "echo.requests", warm)
        await burst(sender, rows_reader, topics.events_raw, warm)
        before = {s: batch_totals(port) for s, port in ports.items()}
        figures["ceiling_rounds"], figures["data_rounds"] = [], []
        for round_ in range(BURST_ROUNDS):  # echo and data path alternate: the same machine for both
            items = observations(BURST, seed=1 + 2 * round_)
            figures["ceiling_rounds"].append(await burst(sender, echo_reader, "echo.requests", items))
            items = observations(BURST, seed=2 + 2 * round_)
            figures["data_rounds"].append(await burst(sender, rows_reader, topics.events_raw, items))
        figures["burst_batch"] = {  # mean records per consumed batch during the burst
            s: (batch_totals(port)[0] - before[s][0]) / max(1.0, batch_totals(port)[1] - before[s][1])
            for s, port in ports.items()
        }
        echo_sent: dict[bytes, float] = {}
        data_sent: dict[bytes, float] = {}
        for round_ in range(LATENCY_ROUNDS):  # echo and data path alternate: the same machine for both
            items = observations(RATE * LATENCY_SECONDS, seed=1000 + 2 * round_)
            echo_sent.update((await offered_load(sender, echo_reader, "echo.requests", items, RATE))[0])
            items = observations(RATE * LATENCY_SECONDS, seed=1001 + 2 * round_)
            data_sent.update((await offered_load(sender, rows_reader, topics.events_raw, items, RATE))[0])
        figures["echo"] = latency(echo_sent, echo_reader)
        figures["data"] = latency(data_sent, rows_reader)
        figures["lost"] = sum(1 for k in data_sent if k not in rows_reader.arrivals)
        await asyncio.sleep(1)  # the offline append follows the publish
        store = RowStore(tmp / "offline")
        figures["offline_rows"] = store.count("benchdata")
        store.close()
        figures["offline_bytes"] = sum(p.stat().st_size for p in (tmp / "offline").rglob("*.parquet"))
        figures["offline_files"] = len(list((tmp / "offline").rglob("*.parquet")))
        redis = subprocess.run(
            ["redis-cli", "-p", str(redis_port), "dbsize"], capture_output=True, text=True, check=False
        )
        figures["online_keys"] = int(redis.stdout.strip() or 0)
        await sender.stop()
        await echo_reader.stop()
        await rows_reader.stop()
        return figures
    finally:
        stop_processes(procs)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        f = asyncio.run(run(Path(tmp)))
    ceiling, data = float(np.median(f["ceiling_rounds"])), float(np.median(f["data_rounds"]))
    result = {
        "ceiling_msgs_per_s": round(ceiling),
        "data_events_per_s": round(data),
        "ratio": round(data / ceiling, 3),
        "ceiling_rounds": [round(x) for x in f["ceiling_rounds"]],
        "data_rounds": [round(x) for x in f["data_rounds"]],
        "round_ratios": [round(d / c, 3) for c, d in zip(f["ceiling_rounds"], f["data_rounds"], strict=True)],
        "p50_ms": round(f["data"]["p50"], 2),
        "p99_ms": round(f["data"]["p99"], 2),
        "echo_p50_ms": round(f["echo"]["p50"], 2),
        "echo_p99_ms": round(f["echo"]["p99"], 2),
        "latency_rate_per_s": RATE,
        "lost_at_fixed_load": f["lost"],
        "offline_bytes_per_row": round(f["offline_bytes"] / max(1, f["offline_rows"]), 1),
        "burst_mean_batch": {s: round(v, 1) for s, v in f["burst_batch"].items()},
        "offline_rows": f["offline_rows"],
        "offline_files": f["offline_files"],
        "online_keys": f["online_keys"],
        "path": "events.raw -> ingest (validate, dedup, Parquet) -> events.validated -> feature "
        "(aggregates, Redis) -> features.computed; 12 numeric features, 2 aggregates, 1,000 entities",
    }
    print(
        table(
            "bench-data (one run)",
            [
                ("echo ceiling msg/s (median of 3 rounds)", result["ceiling_msgs_per_s"]),
                ("data path events/s (ingest -> feature, median)", result["data_events_per_s"]),
                ("ratio of the medians (target >= 0.3)", result["ratio"]),
                (
                    "rounds: echo / data / ratio",
                    " | ".join(
                        f"{c} / {d} / {r}"
                        for c, d, r in zip(
                            result["ceiling_rounds"],
                            result["data_rounds"],
                            result["round_ratios"],
                            strict=True,
                        )
                    ),
                ),
                (
                    f"p50 / p99 ms at {RATE}/s events.raw -> features.computed",
                    f"{result['p50_ms']} / {result['p99_ms']}",
                ),
                (
                    f"echo p50 / p99 ms at {RATE}/s (one hop)",
                    f"{result['echo_p50_ms']} / {result['echo_p99_ms']}",
                ),
                (
                    "mean batch in the burst (ingest / feature)",
                    " / ".join(str(v) for v in result["burst_mean_batch"].values()),
                ),
                ("lost at fixed load", result["lost_at_fixed_load"]),
                ("offline store bytes/row (Parquet, zstd)", result["offline_bytes_per_row"]),
                ("offline rows / files", f"{result['offline_rows']} / {result['offline_files']}"),
                ("online keys (entities)", result["online_keys"]),
            ],
        )
    )
    print(f"written {write('data', result)}")


if __name__ == "__main__":
    main()
