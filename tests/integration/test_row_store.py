"""The row store on real files: Parquet per batch and date, an index as the source of truth,
duplicates skipped, crashes leave nothing visible, and a dataset version re-reads the same rows."""

from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest

from driftloop.store import RowStore

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


def test_an_index_of_the_first_layout_is_converted_when_opened(tmp_path):
    import sqlite3

    store = RowStore(tmp_path)
    before_1970 = ("old", datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), b"{}")
    store.append("sea", [*_rows(0, 5), before_1970])

    def reads(s):
        between = {"since": T0 + timedelta(seconds=1), "until": T0 + timedelta(seconds=4)}
        return (s.window("sea"), s.manifest("sea", last_n=4), s.count("sea", **between), s.max_seq("sea"))

    before = reads(store)
    places = store._conn("sea").execute(
        "SELECT seq, event_id, event_us, files.name, row FROM rows JOIN files ON files.id = rows.file"
    )
    first_layout = [  # as the first layout kept them: ISO times, file names per row
        (
            seq,
            eid,
            (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).isoformat(
                timespec="microseconds"
            ),
            name,
            row,
        )
        for seq, eid, us, name, row in places
    ]
    store.close()
    index = tmp_path / "sea" / "index.sqlite3"
    index.unlink()
    conn = sqlite3.connect(index)
    conn.executescript(
        "CREATE TABLE rows (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE,"
        " event_time TEXT NOT NULL, file TEXT NOT NULL, row INTEGER NOT NULL);"
        "CREATE INDEX rows_time ON rows(event_time, seq);"
    )
    conn.executemany("INSERT INTO rows VALUES (?, ?, ?, ?, ?)", first_layout)
    conn.commit()
    conn.close()

    reopened = RowStore(tmp_path)
    assert reads(reopened) == before
    assert reopened.append("sea", _rows(4, 3)) == 2  # e4 is known; e5, e6 are new
    assert reopened.window("sea")[0] == b"{}"  # 1969 first, in event-time order
