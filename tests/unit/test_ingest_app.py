"""The ingest handler as its consume loop runs it: good records flow, bad ones are dead-lettered,
duplicates are dropped, and the offline store is appended only after the outputs are out."""

import base64
import io
from datetime import timedelta

import orjson
import pyarrow.parquet as pq
import pytest
from obstore.store import MemoryStore

from driftloop.contracts import DeadLetter, Observation
from driftloop.faults import Unavailable
from driftloop.objects import ObjectStore
from driftloop.settings import Topics
from driftloop.spec import load_specs
from driftloop.store import RowStore
from driftloop_ingest.adapters import OfflineExport
from driftloop_ingest.handlers import IngestHandler
from tests.conftest import ROOT
from tests.helpers import records


async def test_ingest_validates_dead_letters_and_dedupes(tmp_path):
    topics = Topics()
    store = RowStore(tmp_path)
    handler = IngestHandler(load_specs(ROOT / "models"), store, topics, timedelta(minutes=5))
    good = {"event_id": "e1", "model": "sea", "features": {"x0": 1, "x1": 2, "x2": 3}, "label": 1,
            "entity_id": "u1"}  # fmt: skip
    handled = await handler.handle(
        records(topics.events_raw, [orjson.dumps(good), b"{oops", orjson.dumps(good)])
    )
    validated = [o for o in handled.outputs if o.topic == topics.events_validated]
    (dead,) = [
        DeadLetter.model_validate_json(o.value) for o in handled.outputs if o.topic == topics.events_dlq
    ]

    assert [Observation.model_validate_json(o.value).event_id for o in validated] == ["e1"]
    assert validated[0].key == b"u1"  # an entity's events share a partition
    assert dead.reason == "malformed_json" and base64.b64decode(dead.original) == b"{oops"
    assert (dead.source_topic, dead.source_offset) == (topics.events_raw, 1)
    assert store.count("sea") == 0, "stored before the outputs were acknowledged"
    assert handled.then is not None
    handled.then()
    assert store.count("sea") == 1

    again = await handler.handle(records(topics.events_raw, [orjson.dumps(good)]))
    assert again.outputs == []  # a redelivery or producer retry: dropped as a duplicate
    store.close()


async def test_a_duplicate_in_the_next_batch_is_dropped_before_the_first_is_stored(tmp_path):
    # the loop is pipelined: batch 2 is handled while batch 1 waits for its acknowledgement
    topics = Topics()
    store = RowStore(tmp_path)
    handler = IngestHandler(load_specs(ROOT / "models"), store, topics, timedelta(minutes=5))
    good = orjson.dumps({"event_id": "e1", "model": "sea", "features": {"x0": 1, "x1": 2, "x2": 3}})
    first = await handler.handle(records(topics.events_raw, [good]))
    second = await handler.handle(records(topics.events_raw, [good]))
    assert len(first.outputs) == 1 and second.outputs == []

    handler.checkpoint.rewound()  # batch 1 failed: both come again, and e1 is new again
    again = await handler.handle(records(topics.events_raw, [good]))
    assert len(again.outputs) == 1
    assert again.then is not None
    again.then()
    assert store.count("sea") == 1
    assert (await handler.handle(records(topics.events_raw, [good]))).outputs == []
    store.close()


class _Flaky(ObjectStore):
    """An object store that is unreachable until told otherwise."""

    def __init__(self) -> None:
        super().__init__("memory://", MemoryStore())
        self.down = True

    async def put(self, key: str, data: bytes) -> None:
        if self.down:
            raise Unavailable("object store down")
        await super().put(key, data)


async def test_the_offline_files_reach_the_object_store_once_even_after_it_was_down(tmp_path):
    topics = Topics()
    store, objects = RowStore(tmp_path), _Flaky()
    handler = IngestHandler(load_specs(ROOT / "models"), store, topics, timedelta(minutes=5))
    export = OfflineExport(store, objects, most=1)

    def observation(i: int) -> bytes:
        return orjson.dumps({"event_id": f"e{i}", "model": "sea", "features": {"x0": 1, "x1": 2, "x2": 3},
                             "label": 1, "event_time": f"2026-11-{10 + i}T00:00:00+00:00"})  # fmt: skip

    for i in (1, 2, 3):  # the stream goes on while the object store is down
        handled = await handler.handle(records(topics.events_raw, [observation(i)]))
        handled.then()
    with pytest.raises(Unavailable):
        await export.export()
    assert [name for name, _ in store.unexported("sea")] == [
        f"date=2026-11-{10 + i}/part-{i:012d}-{i:012d}.parquet" for i in (1, 2, 3)
    ]
    objects.down = False
    (tmp_path / "sea" / store.unexported("sea")[2][0]).unlink()  # a file gone from disk
    assert [await export.export() for _ in range(3)] == [
        1,
        1,
        0,
    ]  # at most one a pass; the gone one passed over
    assert store.unexported("sea") == []
    writer = store.writer
    assert writer == RowStore(tmp_path).writer  # kept with the store
    for i in (1, 2):
        key = f"offline/sea/date=2026-11-{10 + i}/{writer}-part-{i:012d}-{i:012d}.parquet"
        table = pq.read_table(io.BytesIO(await objects.get(key)))
        assert table.column("event_id").to_pylist() == [f"e{i}"]
    assert len(await objects.keys("offline/sea")) == 2
    other = RowStore(tmp_path / "another-instance")  # a second ingest: the same file names, other keys
    assert other.writer != writer
    assert OfflineExport(other, objects).key(
        "sea", "date=2026-11-11/part-000000000001-000000000001.parquet"
    ) not in (await objects.keys("offline/sea"))
    store.close()
