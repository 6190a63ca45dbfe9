"""The row store on real files: Parquet per batch and date, an index as the source of truth,
duplicates skipped, crashes leave nothing visible, and a dataset version re-reads the same rows."""

import errno
import pickle
import random
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from driftloop import store as store_module
from driftloop.store import DATE_PARTITIONING, DEFAULT_PARTITION, RowStore, StoreFull

T0 = datetime(2026, 11, 21, 23, 59, 58, tzinfo=UTC)


def _rows(start: int, n: int, step_s: float = 1.0):
    return [
        (f"e{i}", T0 + timedelta(seconds=i * step_s), f'{{"i": {i}}}'.encode())
        for i in range(start, start + n)
    ]


def test_batches_become_parquet_files_per_date_and_duplicates_are_skipped(tmp_path):
    store = RowStore(tmp_path)
    assert store.append("sea", _rows(0, 4)) == 4  # two rows on each side of midnight
    assert store.append("sea", _rows(2, 4) + _rows(5, 1)) == 2  # e2..e5 again, e5 twice in one batch
    files = sorted(p.relative_to(tmp_path / "sea").as_posix() for p in (tmp_path / "sea").rglob("*.parquet"))
    assert files == [
        "date=2026-11-21/part-000000000001-000000000002.parquet",
        "date=2026-11-22/part-000000000003-000000000004.parquet",
        "date=2026-11-22/part-000000000005-000000000006.parquet",
    ]
    table = pq.read_table(tmp_path / "sea" / files[0])
    assert table.column_names == ["event_id", "event_time", "seq", "body"]
    assert store.count("sea") == 6
    assert store.window("sea") == [f'{{"i": {i}}}'.encode() for i in range(6)]
    assert store.known("sea", ["e0", "e9"]) == {"e0"}


def test_a_dataset_version_re_reads_the_same_rows_and_names_them(tmp_path):
    store = RowStore(tmp_path)
    store.append("sea", _rows(0, 10))
    version = store.max_seq("sea")
    first = store.window("sea", last_n=6, max_seq=version)
    manifest = store.manifest("sea", last_n=6, max_seq=version)
    store.append("sea", _rows(10, 10))  # newer rows do not change the version
    assert store.window("sea", last_n=6, max_seq=version) == first
    assert store.manifest("sea", last_n=6, max_seq=version) == manifest
    assert manifest == [
        "date=2026-11-22/part-000000000003-000000000010.parquet:2-7",  # e4..e9
    ]
    assert store.window("sea", last_n=6) != first


def test_a_crash_before_the_index_commit_leaves_nothing_visible(tmp_path, monkeypatch):
    store = RowStore(tmp_path)
    store.append("sea", _rows(0, 3))

    def crash(*args, **kwargs):
        raise OSError("disk gone")

    real_write = RowStore._write
    calls = []

    def write_then_crash(path, part):
        real_write(path, part)
        calls.append(path)
        crash()

    monkeypatch.setattr(RowStore, "_write", staticmethod(write_then_crash))
    with pytest.raises(OSError):
        store.append("sea", _rows(3, 3))
    monkeypatch.setattr(RowStore, "_write", staticmethod(real_write))
    assert calls and calls[0].exists()  # the file was written ...
    assert store.count("sea") == 3 and len(store.window("sea")) == 3  # ... but no reader sees it
    assert store.append("sea", _rows(3, 3)) == 3  # the redelivery replaces it under the same name
    assert len(list((tmp_path / "sea").rglob("*.parquet"))) == 3  # 2 (across midnight) + 1
    assert store.count("sea") == 6


def test_model_names_never_become_paths(tmp_path):
    store = RowStore(tmp_path)
    with pytest.raises(ValueError, match="invalid model name"):
        store.append("../../etc", _rows(0, 1))


def test_an_index_of_another_layout_is_refused_not_misread(tmp_path):
    import sqlite3

    (tmp_path / "sea").mkdir()
    conn = sqlite3.connect(tmp_path / "sea" / "index.sqlite3")
    conn.executescript(
        "CREATE TABLE rows (seq INTEGER PRIMARY KEY, event_time TEXT); PRAGMA user_version = 1;"
    )
    conn.close()
    with pytest.raises(RuntimeError, match="row store index of layout 1, not 3"):
        RowStore(tmp_path).append("sea", _rows(0, 1))


def _spread(n: int, seed: int = 1):
    """`n` rows with event times anywhere from 1970 to T0, the newest at T0 (a hostile batch)."""
    rng = random.Random(seed)
    span = (T0 - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()
    times = [T0 - timedelta(seconds=rng.random() * span) for _ in range(n - 1)] + [T0]
    return [(f"h{seed}-{i}", t, f'{{"h": {i}}}'.encode()) for i, t in enumerate(times)]


def _files(tmp_path):
    return sorted(p.relative_to(tmp_path / "sea").as_posix() for p in (tmp_path / "sea").rglob("*.parquet"))


def _indexed(store):
    return sorted(name for (name,) in store._conn("sea").execute("SELECT name FROM files"))


def test_a_batch_spread_over_decades_writes_a_bounded_number_of_files(tmp_path):
    store = RowStore(tmp_path, partition_days=31)
    rows = _spread(2000)
    assert store.append("sea", rows) == 2000
    files = _files(tmp_path)
    assert len(files) <= 31 + 2
    old = [f for f in files if f.startswith(f"date={DEFAULT_PARTITION}/")]
    assert len(old) == 1  # every row older than 31 days before the newest, in one file
    recent_days = {(T0 - timedelta(days=d)).date().isoformat() for d in range(32)}
    assert {f.split("/")[0].removeprefix("date=") for f in files} - {DEFAULT_PARTITION} <= recent_days
    assert store.append("sea", _spread(2000, seed=2)) == 2000  # one more null-partition file per batch
    assert len([f for f in _files(tmp_path) if f.startswith(f"date={DEFAULT_PARTITION}/")]) == 2


def test_windows_by_event_time_read_across_both_kinds_of_partition(tmp_path):
    store = RowStore(tmp_path, partition_days=31)
    rows = _spread(2000)
    store.append("sea", rows)
    by_time = sorted(rows, key=lambda r: r[1])
    for since, until in [
        (datetime(1980, 1, 1, tzinfo=UTC), datetime(1990, 1, 1, tzinfo=UTC)),  # null partition only
        (T0 - timedelta(days=20), None),  # date partitions only
        (datetime(2000, 1, 1, tzinfo=UTC), None),  # both
    ]:
        expected = [b for _, t, b in by_time if t >= since and (until is None or t < until)]
        assert expected and store.window("sea", since, until) == expected
        assert store.count("sea", since, until) == len(expected)
    assert store.window("sea") == [b for _, _, b in by_time]
    assert store.window("sea", last_n=5) == [b for _, _, b in by_time[-5:]]
    manifest = store.manifest(
        "sea", since=datetime(1980, 1, 1, tzinfo=UTC), until=datetime(1990, 1, 1, tzinfo=UTC)
    )
    assert len(manifest) > 1 and all(m.startswith(f"date={DEFAULT_PARTITION}/") for m in manifest)
    version = store.max_seq("sea")
    store.append("sea", _spread(500, seed=3))  # newer rows, old times: the version reads the same
    assert store.window("sea", max_seq=version) == [b for _, _, b in by_time]


def test_pyarrow_reads_the_whole_tree_with_hive_partitioning(tmp_path):
    store = RowStore(tmp_path, partition_days=7)
    rows = _spread(300)
    store.append("sea", rows)
    table = ds.dataset(
        tmp_path / "sea", format="parquet", partitioning=DATE_PARTITIONING, exclude_invalid_files=True
    ).to_table()
    assert table.num_rows == 300
    newest_day = T0.date()
    for row in table.to_pylist():
        event_day = row["event_time"].date()
        if (newest_day - event_day).days <= 7:
            assert row["date"] == event_day
        else:
            assert row["date"] is None  # Hive's null partition; the real time is in `event_time`
    assert {(r["event_id"], r["event_time"]) for r in table.to_pylist()} == {(e, t) for e, t, _ in rows}


_CRASH = """
import os, pickle, sys
from pathlib import Path
from driftloop.store import RowStore
real_write, written = RowStore._write, []
def write_then_die(path, part):
    real_write(path, part)
    written.append(path)
    if len(written) == 3:
        os._exit(9)  # killed between two files: nothing cleans up
RowStore._write = staticmethod(write_then_die)
RowStore(Path(sys.argv[1]), partition_days=31).append("sea", pickle.loads(sys.stdin.buffer.read()))
"""


def test_partitions_depend_on_the_batch_alone_so_a_redelivery_replaces_what_a_crash_left(tmp_path):
    store = RowStore(tmp_path, partition_days=31)
    store.append("sea", _spread(100))
    store.close()
    recent = [(f"c{i}", T0 - timedelta(days=i % 60, seconds=i), b"{}") for i in range(300)]
    batch = recent + _spread(100, seed=2)
    crashed = subprocess.run([sys.executable, "-c", _CRASH, str(tmp_path)], input=pickle.dumps(batch))
    assert crashed.returncode == 9
    assert len(_files(tmp_path)) > len(_indexed(RowStore(tmp_path)))  # files the index never got
    store = RowStore(tmp_path, partition_days=31)
    assert store.count("sea") == 100
    assert store.append("sea", batch) == 400
    assert len(_files(tmp_path)) == 2 + 33
    assert _files(tmp_path) == _indexed(store)  # the redelivery wrote the same names: nothing left over


def test_a_full_disk_while_writing_a_file_leaves_no_file_and_no_index_entry(tmp_path, monkeypatch):
    store = RowStore(tmp_path, partition_days=31)
    store.append("sea", _rows(0, 3))
    before = (_files(tmp_path), store.count("sea"), store.max_seq("sea"))
    real_write_table = pq.write_table
    calls = []

    def write_half_then_fail(table, where, **kwargs):
        calls.append(where)
        if len(calls) < 2:
            return real_write_table(table, where, **kwargs)
        with open(where, "wb") as half:
            half.write(b"PAR1 half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.pq, "write_table", write_half_then_fail)
    batch = _spread(200, seed=4)
    with pytest.raises(StoreFull) as failed:
        store.append("sea", batch)
    assert isinstance(failed.value, OSError) and failed.value.errno == errno.ENOSPC
    monkeypatch.setattr(store_module.pq, "write_table", real_write_table)
    assert len(calls) == 2
    assert not [p for p in (tmp_path / "sea").rglob("*") if p.is_file() and p.suffix == ".tmp"]
    assert (
        _files(tmp_path),
        store.count("sea"),
        store.max_seq("sea"),
    ) == before  # the first file is gone too
    assert store.append("sea", batch) == 200  # the same batch, once there is room
    assert _files(tmp_path) == _indexed(store)


def test_a_full_index_leaves_no_file_and_no_index_entry(tmp_path):
    store = RowStore(tmp_path)
    store.append("sea", _rows(0, 3))
    before = (_files(tmp_path), store.count("sea"), store.max_seq("sea"), store.window("sea"))
    conn = store._conn("sea")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL at the commit
    batch = _rows(3, 2000)
    with pytest.raises(StoreFull) as failed:
        store.append("sea", batch)
    assert failed.value.errno == errno.ENOSPC
    assert (_files(tmp_path), store.count("sea"), store.max_seq("sea"), store.window("sea")) == before
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert store.append("sea", batch) == 2000
    assert store.count("sea") == 2003 and _files(tmp_path) == _indexed(store)


def test_ensure_space_refuses_below_the_threshold_without_touching_the_disk(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    not_made = tmp_path / "offline"
    with pytest.raises(StoreFull) as refused:
        RowStore(not_made, min_free_bytes=free + 2**40).ensure_space()
    assert isinstance(refused.value, OSError) and refused.value.errno == errno.ENOSPC
    assert "MiB free" in str(refused.value)
    RowStore(not_made, min_free_bytes=1).ensure_space()
    RowStore(not_made, min_free_bytes=0).ensure_space()  # 0: no check
    assert not not_made.exists()
    with pytest.raises(ValueError):
        RowStore(not_made, partition_days=-1)
