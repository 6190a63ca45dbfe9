"""The append-only, idempotent row store of the offline store (ingest) and the training store.

Rows live in columnar Parquet files (zstd), partitioned by model and event date, written once per
appended batch and never changed: `<root>/<model>/date=YYYY-MM-DD/part-<first seq>-<last seq>.parquet`,
columns `event_id`, `event_time`, `seq`, `body`. A SQLite index per model records every row's
event id, time (microseconds since the epoch), sequence number and place (file id, row) and is the
source of truth: a row exists once its index entry is committed.

- Partitions: a batch gets one date partition per event day only for days within `partition_days`
  before its newest row's day; older rows share one file in Hive's null partition
  `date=__HIVE_DEFAULT_PARTITION__`. So a batch writes at most `partition_days + 2` files however
  its event times are spread, and the partitions depend on the batch alone, never on a clock.
  Reads go through the index, by event time, whatever the partition; a whole-tree reader gets
  those rows a null `date` and their real `event_time`:
  `ds.dataset(root / model, format="parquet", partitioning=DATE_PARTITIONING, exclude_invalid_files=True)`.
- Duplicates: an event id already indexed is skipped, so redelivery never creates a second row.
- Crashes: a file is written under a temporary name (`.part-….tmp`, which dataset discovery skips)
  and renamed before its rows are indexed in one transaction. A crash before the commit leaves an
  unindexed file, which readers never see; a redelivered batch of the same rows gets the same
  sequence numbers and replaces it under its name. An append that fails (a full disk) removes
  what it wrote and leaves the index as it was.
- Space: `ensure_space` raises `StoreFull` when the filesystem has less than `min_free_bytes` free,
  one `statvfs`; a caller that publishes before it appends checks it first. A full disk met while
  appending raises `StoreFull` too. It is an `OSError`: an infrastructure fault, retried.
- Versions: sequence numbers only grow, so a window read with the same `max_seq` always yields the
  same rows; `manifest` names exactly the files and row ranges such a read uses.
"""

from __future__ import annotations

import errno
import functools
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from driftloop.contracts import as_utc
from driftloop.spec import MODEL_NAME

_LAYOUT = 3  # PRAGMA user_version of the index (3: files exported to the object store)
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
CREATE TABLE IF NOT EXISTS exported (file INTEGER PRIMARY KEY REFERENCES files(id));
"""
DEFAULT_PARTITION = "__HIVE_DEFAULT_PARTITION__"  # Hive's (and pyarrow's) name of the null partition
DATE_PARTITIONING = ds.partitioning(pa.schema([("date", pa.date32())]), flavor="hive")
PARTITION_DAYS = 31
MIN_FREE_BYTES = 256 * 2**20
_FULL = {errno.ENOSPC, errno.EDQUOT}
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


def _iso_day(day: int) -> str:
    """Days since the epoch as an ISO date: 20414 -> '2025-11-22'."""
    return date.fromordinal(_EPOCH.toordinal() + day).isoformat()


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
    """Create the index, or check that it has the current layout (one transaction)."""
    layout = conn.execute("PRAGMA user_version").fetchone()[0]
    if layout == _LAYOUT:
        return
    exists = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'rows'").fetchone()[0]
    if exists and layout != 2:  # 2 -> 3 adds a table; anything else is another version's
        raise RuntimeError(f"row store index of layout {layout}, not {_LAYOUT}: written by another version")
    with conn:
        conn.execute("BEGIN")
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


class StoreFull(OSError):
    """The filesystem holding a store is (nearly) full: an infrastructure fault, retried later."""


def _full(exc: BaseException, root: Path) -> StoreFull | None:
    """`exc` as `StoreFull` when it is a full disk (an OS error or SQLite's SQLITE_FULL), else None."""
    if isinstance(exc, StoreFull):
        return exc
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return StoreFull(exc.errno, f"store full: {exc.strerror}", str(root))
    if isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
        return StoreFull(errno.ENOSPC, f"store index full: {exc}", str(root))
    return None


class RowStore:
    """Rows (event id, event time, JSON body) per model, in event-time order, deduplicated by id.

    `partition_days` (default 31): the days before a batch's newest row that still get a date
    partition each; a month of late data (a backfill, labels that come days later) keeps its
    days, and a batch writes at most 33 files however hostile its event times.
    `min_free_bytes` (default 256 MiB, 0: no check): the free space `ensure_space` requires. It is
    five times the most one batch adds (its bodies come from one consumer fetch, at most 50 MiB by
    default, and zstd only shrinks them; the index takes about 130 bytes a row), leaves SQLite's
    WAL room to checkpoint, and is small against any volume sized for an offline store.
    """

    def __init__(
        self, root: Path, partition_days: int = PARTITION_DAYS, min_free_bytes: int = MIN_FREE_BYTES
    ) -> None:
        if partition_days < 0 or min_free_bytes < 0:
            raise ValueError("partition_days and min_free_bytes must be >= 0")
        self.root = root
        self.partition_days = partition_days
        self.min_free_bytes = min_free_bytes
        self._conns: dict[str, sqlite3.Connection] = {}
        self._lock = threading.RLock()

    @functools.cached_property
    def writer(self) -> str:
        """This store's own name, random and kept with it (`.writer-id` at its root, a name no model
        can have): files copied out of several stores (one per ingest instance) into one place
        never share a name."""
        path = self.root / ".writer-id"
        with self._lock:
            if not path.exists():
                self.root.mkdir(parents=True, exist_ok=True)
                fresh = path.with_suffix(f".{uuid.uuid4().hex}")
                fresh.write_text(uuid.uuid4().hex[:12])
                os.replace(fresh, path)
            return path.read_text().strip()

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

    def ensure_space(self) -> None:
        """Raise `StoreFull` when the filesystem holding the store has less than `min_free_bytes`
        free for the service's user (one `statvfs`): call it before output an append must follow."""
        if not self.min_free_bytes:
            return
        where = self.root
        while not where.exists() and where != where.parent:  # the store is made on first append
            where = where.parent
        stat = os.statvfs(where)
        free = stat.f_bavail * stat.f_frsize
        if free < self.min_free_bytes:
            raise StoreFull(
                errno.ENOSPC,
                f"store full: {free // 2**20} MiB free, below its minimum {self.min_free_bytes // 2**20} MiB",
                str(self.root),
            )

    def _partitions(self, days: set[int]) -> dict[int, str]:
        """Each event day's partition: its date within `partition_days` before the newest day,
        else Hive's null partition."""
        oldest = max(days) - self.partition_days
        return {day: f"date={_iso_day(day) if day >= oldest else DEFAULT_PARTITION}" for day in days}

    def append(self, model: str, rows: Iterable[tuple[str, datetime, bytes]]) -> int:
        """Append (event_id, event_time, body) rows as one file per partition (event date, or the
        null partition for old rows); ids already present are skipped. Returns the number of new
        rows. On failure nothing is left: no file, no index entry (`StoreFull` on a full disk)."""
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
            partition = self._partitions({row[1] // _DAY_US for row in numbered})
            parts: dict[str, list[tuple[str, int, bytes, int]]] = {}
            for row in numbered:
                parts.setdefault(partition[row[1] // _DAY_US], []).append(row)
            names = {
                key: f"{key}/part-{part[0][3]:012d}-{part[-1][3]:012d}.parquet" for key, part in parts.items()
            }
            written: list[Path] = []
            try:
                for key, part in sorted(parts.items()):
                    self._write(directory / names[key], part)
                    written.append(directory / names[key])
                with conn:
                    for key, part in sorted(parts.items()):
                        file = conn.execute("INSERT INTO files(name) VALUES (?)", (names[key],)).lastrowid
                        conn.executemany(
                            "INSERT INTO rows(event_id, event_us, seq, file, row) VALUES (?, ?, ?, ?, ?)",
                            [(eid, us, s, file, r) for r, (eid, us, _, s) in enumerate(part)],
                        )
            except BaseException as exc:
                for path in written:  # unindexed, so no reader sees them: give their space back
                    path.unlink(missing_ok=True)
                full = _full(exc, self.root)
                if full is not None and full is not exc:
                    raise full from exc
                raise
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
        temporary = path.with_name(f".{path.stem}.tmp")  # a dot: dataset discovery skips it
        try:
            # no dictionary encoding: ids and bodies are unique (it cost CPU and ~8% more bytes)
            pq.write_table(table, temporary, compression="zstd", use_dictionary=False)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def models(self) -> list[str]:
        """The models this store holds rows of."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if (p / "index.sqlite3").exists() and MODEL_NAME.match(p.name)
        )

    def unexported(self, model: str) -> list[tuple[str, Path]]:
        """(name below the model, path) of each indexed file not yet marked exported, oldest first."""
        sql = "SELECT name FROM files WHERE id NOT IN (SELECT file FROM exported) ORDER BY id"
        return [(name, self._dir(model) / name) for (name,) in self._conn(model).execute(sql)]

    def mark_exported(self, model: str, names: Sequence[str]) -> None:
        """Record files as exported (`unexported` no longer lists them)."""
        conn = self._conn(model)
        with self._lock, conn:
            conn.executemany(
                "INSERT OR IGNORE INTO exported(file) SELECT id FROM files WHERE name = ?",
                [(n,) for n in names],
            )

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
