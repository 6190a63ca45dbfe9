"""An append-only, idempotent row store (SQLite): the offline store and the training store.

Rows are keyed by event id, so a redelivered message never creates a second row. Each model's rows
live in their own file under the store's directory.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from driftloop.spec import MODEL_NAME

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    event_id TEXT PRIMARY KEY,
    event_time TEXT NOT NULL,
    body BLOB NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rows_time ON rows(event_time, seq);
"""


def _iso(t: datetime) -> str:
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return t.isoformat(timespec="microseconds")


def _where(since: datetime | None, until: datetime | None, max_seq: int | None) -> tuple[str, list[object]]:
    clauses: list[str] = []
    args: list[object] = []
    if since is not None:
        clauses.append("event_time >= ?")
        args.append(_iso(since))
    if until is not None:
        clauses.append("event_time < ?")
        args.append(_iso(until))
    if max_seq is not None:
        clauses.append("seq <= ?")
        args.append(max_seq)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), args


class RowStore:
    """Rows of JSON bodies per model, ordered by event time, deduplicated by event id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._conns: dict[str, sqlite3.Connection] = {}
        self._lock = threading.Lock()

    def _conn(self, model: str) -> sqlite3.Connection:
        if not MODEL_NAME.match(model):
            raise ValueError(f"invalid model name {model!r}")
        with self._lock:
            if model not in self._conns:
                self.root.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.root / f"{model}.sqlite3", check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
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
        """Append (event_id, event_time, body) rows; ids already present are skipped. Returns new rows."""
        conn = self._conn(model)
        with self._lock, conn:
            before = conn.total_changes
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM rows").fetchone()[0]
            conn.executemany(
                "INSERT OR IGNORE INTO rows(event_id, event_time, body, seq) VALUES (?, ?, ?, ?)",
                [(eid, _iso(t), body, seq + i + 1) for i, (eid, t, body) in enumerate(rows)],
            )
            return conn.total_changes - before

    def count(self, model: str, since: datetime | None = None, until: datetime | None = None) -> int:
        """Rows of a model with event time in [since, until)."""
        where, args = _where(since, until, None)
        return int(self._conn(model).execute(f"SELECT COUNT(*) FROM rows {where}", args).fetchone()[0])

    def max_seq(self, model: str) -> int:
        """Sequence number of the newest stored row (0 when empty)."""
        return int(self._conn(model).execute("SELECT COALESCE(MAX(seq), 0) FROM rows").fetchone()[0])

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
        where, args = _where(since, until, max_seq)
        limit = f"LIMIT {int(last_n)}" if last_n else ""
        sql = f"SELECT body FROM rows {where} ORDER BY event_time DESC, seq DESC {limit}"
        return [r[0] for r in self._conn(model).execute(sql, args)][::-1]

    def close(self) -> None:
        with self._lock:
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()
