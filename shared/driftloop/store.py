"""The append-only, idempotent row store of the offline store (ingest) and the training store.

Rows live in columnar Parquet files (zstd), partitioned by model and event date, written once per
appended batch and never changed: `<root>/<model>/date=YYYY-MM-DD/part-<first seq>-<last seq>.parquet`,
columns `event_id`, `event_time`, `seq`, `body`. A SQLite index per model records every row's
event id, time (microseconds since the epoch), sequence number and place (file id, row) and is the
source of truth: a row exists once its index entry is committed. An index of the first layout
(times as ISO text, file names per row) is converted in place when opened.

- Duplicates: an event id already indexed is skipped, so redelivery never creates a second row.
- Crashes: a file is written under a temporary name and renamed before its rows are indexed in one
  transaction. A crash before the commit leaves an unindexed file, which readers never see; a
  redelivered batch of the same rows gets the same sequence numbers and replaces it under its name.
- Versions: sequence numbers only grow, so a window read with the same `max_seq` always yields the
  same rows; `manifest` names exactly the files and row ranges such a read uses.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from driftloop.contracts import as_utc
from driftloop.spec import MODEL_NAME

_LAYOUT = 2  # PRAGMA user_version of the index
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS rows (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    event_us INTEGER NOT NULL,
    file INTEGER NOT NULL REFERENCES files(id),
    row INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rows_time ON rows(event_us, seq);
"""
# the first layout: ISO times ('YYYY-MM-DDTHH:MM:SS.ffffff+00:00', always UTC) and names per row
_FROM_LAYOUT_1 = (
    "ALTER TABLE rows RENAME TO rows_1; DROP INDEX IF EXISTS rows_time;"
    + _SCHEMA
    + """
INSERT INTO files(name) SELECT DISTINCT file FROM rows_1 ORDER BY file;
INSERT INTO rows(seq, event_id, event_us, file, row)
    SELECT seq, event_id,
           CAST(strftime('%s', substr(event_time, 1, 19) || 'Z') AS INTEGER) * 1000000
                + CAST(substr(event_time, 21, 6) AS INTEGER),
           files.id, row
    FROM rows_1 JOIN files ON files.name = rows_1.file;
DROP TABLE rows_1;
"""
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_DAY_US = 86_400_000_000
_ARROW = pa.schema(
    [
        ("event_id", pa.string()),
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("seq", pa.int64()),
        ("body", pa.binary()),
    ]
)


def _micros(t: datetime) -> int:
    """Microseconds since the epoch, exactly (naive is taken as UTC)."""
    return (as_utc(t) - _EPOCH) // _US


def _where(since: datetime | None, until: datetime | None, max_seq: int | None) -> tuple[str, list[object]]:
    clauses: list[str] = []
    args: list[object] = []
    if since is not None:
        clauses.append("event_us >= ?")
        args.append(_micros(since))
    if until is not None:
        clauses.append("event_us < ?")
        args.append(_micros(until))
    if max_seq is not None:
        clauses.append("seq <= ?")
        args.append(max_seq)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), args


def _open_layout(conn: sqlite3.Connection) -> None:
    """Create the index, or bring one of the first layout to the current one (one transaction)."""
    layout = conn.execute("PRAGMA user_version").fetchone()[0]
    if layout == _LAYOUT:
        return
    columns = {r[1] for r in conn.execute("PRAGMA table_info(rows)")}
    with conn:
        conn.execute("BEGIN")
        if "event_time" in columns:  # the first layout
            for statement in _FROM_LAYOUT_1.split(";"):
                if statement.strip():
                    conn.execute(statement)
        else:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {_LAYOUT}")


def _ranges(rows: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted row numbers as inclusive (first, last) runs: [0, 1, 2, 5] -> [(0, 2), (5, 5)]."""
    runs: list[tuple[int, int]] = []
    for r in sorted(rows):
        if runs and r == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], r)
        else:
            runs.append((r, r))
    return runs


class RowStore:
    """Rows (event id, event time, JSON body) per model, in event-time order, deduplicated by id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._conns: dict[str, sqlite3.Connection] = {}
        self._lock = threading.RLock()

    def _dir(self, model: str) -> Path:
        if not MODEL_NAME.match(model):  # never a path: no file lands outside the store
            raise ValueError(f"invalid model name {model!r}")
        return self.root / model

    def _conn(self, model: str) -> sqlite3.Connection:
        directory = self._dir(model)
        with self._lock:
            if model not in self._conns:
                directory.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(directory / "index.sqlite3", check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                _open_layout(conn)
                self._conns[model] = conn
            return self._conns[model]

    def known(self, model: str, event_ids: Sequence[str]) -> set[str]:
        """The subset of `event_ids` already stored."""
        if not event_ids:
            return set()
        conn = self._conn(model)
        found: set[str] = set()
        for start in range(0, len(event_ids), 500):
            chunk = list(event_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT event_id FROM rows WHERE event_id IN ({marks})"
            found.update(r[0] for r in conn.execute(sql, chunk))
        return found

    def append(self, model: str, rows: Iterable[tuple[str, datetime, bytes]]) -> int:
        """Append (event_id, event_time, body) rows as one file per event date; ids already present
        are skipped. Returns the number of new rows."""
        conn = self._conn(model)
        directory = self._dir(model)
        with self._lock:
            pending = list(rows)
            stored = self.known(model, [eid for eid, _, _ in pending])
            fresh: dict[str, tuple[int, bytes]] = {}
            for eid, t, body in pending:
                if eid not in stored and eid not in fresh:
                    fresh[eid] = (_micros(t), body)
            if not fresh:
                return 0
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM rows").fetchone()[0]
            numbered = [(eid, us, body, seq + i + 1) for i, (eid, (us, body)) in enumerate(fresh.items())]
            by_day: dict[int, list[tuple[str, int, bytes, int]]] = {}
            for row in numbered:
                by_day.setdefault(row[1] // _DAY_US, []).append(row)
            names = {}
            for day, part in sorted(by_day.items()):
                when = date.fromordinal(_EPOCH.toordinal() + day).isoformat()
                names[day] = f"date={when}/part-{part[0][3]:012d}-{part[-1][3]:012d}.parquet"
                self._write(directory / names[day], part)
            with conn:
                for day, part in sorted(by_day.items()):
                    file = conn.execute("INSERT INTO files(name) VALUES (?)", (names[day],)).lastrowid
                    conn.executemany(
                        "INSERT INTO rows(event_id, event_us, seq, file, row) VALUES (?, ?, ?, ?, ?)",
                        [(eid, us, s, file, r) for r, (eid, us, _, s) in enumerate(part)],
                    )
            return len(numbered)

    @staticmethod
    def _write(path: Path, part: list[tuple[str, int, bytes, int]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "event_id": [r[0] for r in part],
                "event_time": pa.array([r[1] for r in part], type=pa.int64()).cast(_ARROW.field(1).type),
                "seq": [r[3] for r in part],
                "body": [r[2] for r in part],
            },
            schema=_ARROW,
        )
        temporary = path.with_suffix(".tmp")
        # no dictionary encoding: ids and bodies are unique (it cost CPU and ~8% more bytes)
        pq.write_table(table, temporary, compression="zstd", use_dictionary=False)
        os.replace(temporary, path)

    def count(self, model: str, since: datetime | None = None, until: datetime | None = None) -> int:
        """Rows of a model with event time in [since, until)."""
        where, args = _where(since, until, None)
        return int(self._conn(model).execute(f"SELECT COUNT(*) FROM rows {where}", args).fetchone()[0])

    def max_seq(self, model: str) -> int:
        """Sequence number of the newest stored row (0 when empty)."""
        return int(self._conn(model).execute("SELECT COALESCE(MAX(seq), 0) FROM rows").fetchone()[0])

    def _places(
        self,
        model: str,
        since: datetime | None,
        until: datetime | None,
        last_n: int | None,
        max_seq: int | None,
    ) -> list[tuple[str, int, int]]:
        """(file, row, seq) of the window's rows, in event-time order."""
        where, args = _where(since, until, max_seq)
        limit = f"LIMIT {int(last_n)}" if last_n else ""
        sql = (
            f"SELECT files.name, row, seq FROM rows JOIN files ON files.id = rows.file {where} "
            f"ORDER BY event_us DESC, seq DESC {limit}"
        )
        return [(f, r, s) for f, r, s in self._conn(model).execute(sql, args)][::-1]

    def window(
        self,
        model: str,
        since: datetime | None = None,
        until: datetime | None = None,
        last_n: int | None = None,
        max_seq: int | None = None,
    ) -> list[bytes]:
        """Bodies in event-time order: rows in [since, until) stored up to `max_seq`, at most the
        newest `last_n`. The same arguments always return the same rows (the store only appends)."""
        places = self._places(model, since, until, last_n, max_seq)
        if not places:
            return []
        directory = self._dir(model)
        files = [str(directory / f) for f in dict.fromkeys(f for f, _, _ in places)]
        table = ds.dataset(files, format="parquet").to_table(columns=["seq", "body"])  # one threaded scan
        body_of = dict(zip(table.column("seq").to_pylist(), table.column("body").to_pylist(), strict=True))
        return [body_of[s] for _, _, s in places]

    def manifest(
        self,
        model: str,
        since: datetime | None = None,
        until: datetime | None = None,
        last_n: int | None = None,
        max_seq: int | None = None,
    ) -> list[str]:
        """The files and row ranges a `window` read with these arguments uses, as
        `path:first-last` (rows counted from 0, inclusive), in path order."""
        by_file: dict[str, list[int]] = {}
        for file, row, _ in self._places(model, since, until, last_n, max_seq):
            by_file.setdefault(file, []).append(row)
        return [f"{file}:{a}-{b}" for file in sorted(by_file) for a, b in _ranges(by_file[file])]

    def close(self) -> None:
        with self._lock:
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()
