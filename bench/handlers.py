"""`make bench-handlers`: CPU per record of the data path's handlers in one process, no broker:
where `make bench-data`'s time goes on the services' side.

bench-data's observations (12 numeric features, 1,000 entities, two aggregates) go in batches of
`kafka_max_records` through the ingest handler (validation, dedupe, claims, the offline store
append it runs once a batch is acknowledged) and the feature handler (the checks again, the
aggregates, the feature rows, the online-store write on the in-memory store: Redis's own time is
not the handler's), with the garbage collector tuned as the services run it (`tune_gc`). The
ceiling is the least any handler does with a record: parse its JSON and write JSON back (orjson),
measured on the same records in the same run. Each figure is the median of `ROUNDS` passes over
fresh stores.

Usage: python -m bench.handlers
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import orjson
import yaml
from aiokafka import ConsumerRecord

from bench.common import table, write
from bench.data import SPEC, observations
from driftloop.fastpath import Output, tune_gc
from driftloop.online import InMemoryOnlineStore
from driftloop.settings import ServiceSettings, Topics
from driftloop.spec import ModelSpec
from driftloop.store import RowStore
from driftloop_feature.handlers import FeatureHandler
from driftloop_feature.histories import HistoryCache
from driftloop_ingest.handlers import IngestHandler

EVENTS, ROUNDS = 40_000, 3


def records(topic: str, values: list[tuple[bytes | None, bytes]], now_ms: int) -> list[ConsumerRecord]:
    return [
        ConsumerRecord(topic, 0, i, now_ms, 0, key, value, None, len(value), len(key or b""), ())
        for i, (key, value) in enumerate(values)
    ]


async def one_pass(spec: ModelSpec, raw: list[ConsumerRecord], batch: int, root: Path) -> dict[str, float]:
    """Seconds spent in each handler over every record of `raw`, in batches of `batch`."""
    topics, now_ms = Topics(), raw[0].timestamp
    ingest = IngestHandler({spec.name: spec}, RowStore(root / "offline"), topics, timedelta(days=1))
    feature = FeatureHandler(
        {spec.name: spec}, InMemoryOnlineStore(), topics, HistoryCache(max_entities=100_000, ttl_s=3600)
    )
    spent = dict.fromkeys(("ingest", "offline_store", "feature"), 0.0)
    for start in range(0, len(raw), batch):
        begun = time.process_time()
        handled = await ingest.handle(raw[start : start + batch])
        appended = time.process_time()
        assert handled.then is not None
        handled.then()
        stored = time.process_time()
        ingest.checkpoint.committed(ingest.checkpoint.begin())
        validated = [(o.key, o.value) for o in handled.outputs if o.topic == topics.events_validated]
        batch_records = records(topics.events_validated, validated, now_ms)
        computing = time.process_time()
        rows = await feature.handle(batch_records)
        if rows.alongside is not None:
            await rows.alongside
        spent["ingest"] += appended - begun
        spent["offline_store"] += stored - appended
        spent["feature"] += time.process_time() - computing
    return spent


def ceiling(raw: list[ConsumerRecord], topic: str) -> float:
    """Seconds to parse every record's JSON and write it back as an output: the least a handler does."""
    begun = time.process_time()
    outputs = [Output(topic, r.key, orjson.dumps(orjson.loads(r.value))) for r in raw]
    assert len(outputs) == len(raw)
    return time.process_time() - begun


async def run() -> dict:
    spec = ModelSpec.model_validate(yaml.safe_load(SPEC))
    batch = ServiceSettings().kafka_max_records
    tune_gc()  # as the services run
    passes, ceilings = [], []
    for round_ in range(ROUNDS):
        raw = records(Topics().events_raw, observations(EVENTS, round_), int(time.time() * 1000))
        ceilings.append(ceiling(raw, Topics().events_validated))
        with tempfile.TemporaryDirectory() as tmp:
            passes.append(await one_pass(spec, raw, batch, Path(tmp)))
    us = {name: statistics.median(p[name] for p in passes) / EVENTS * 1e6 for name in passes[0]}
    ceiling_us = statistics.median(ceilings) / EVENTS * 1e6
    return {
        "events": EVENTS,
        "batch": batch,
        "rounds": ROUNDS,
        "ceiling_us_per_record": round(ceiling_us, 2),
        "ingest_us_per_record": round(us["ingest"], 2),
        "offline_store_us_per_record": round(us["offline_store"], 2),
        "feature_us_per_record": round(us["feature"], 2),
        "data_path_us_per_record": round(sum(us.values()), 2),
        "ceiling_over_data_path": round(2 * ceiling_us / sum(us.values()), 3),
    }


def main() -> None:
    result = asyncio.run(run())
    print(table(
        f"bench-handlers: CPU per record in process, {result['events']:,} observations in batches of "
        f"{result['batch']}, median of {result['rounds']} passes",
        [
            ("ceiling: parse + write the JSON (us)", result["ceiling_us_per_record"]),
            ("ingest handler (us)", result["ingest_us_per_record"]),
            ("  its offline store append (us)", result["offline_store_us_per_record"]),
            ("feature handler (us)", result["feature_us_per_record"]),
            ("data path, both services (us)", result["data_path_us_per_record"]),
            ("two ceilings / data path", result["ceiling_over_data_path"]),
        ],
    ))  # fmt: skip
    print(f"\nwrote {write('handlers', result)}")


if __name__ == "__main__":
    main()
