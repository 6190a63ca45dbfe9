"""The offline store's files in the object store: each Parquet file ingest writes is copied to
`offline/<model>/<partition>/<writer>-<file>` under the object store's URL once it is indexed
(`writer`: the store's own name, so the files of several ingest instances never collide), so any
Parquet reader (pyarrow, duckdb, Spark) reads the offline store without ingest's disk."""

from __future__ import annotations

import asyncio
import logging

from driftloop.faults import is_transient
from driftloop.objects import ObjectStore
from driftloop.store import RowStore

log = logging.getLogger(__name__)

PREFIX = "offline"


class OfflineExport:
    """Copies the files of a row store not yet exported, off the stream loop (a background task):
    an unreachable object store never holds ingest back; the files wait and go on the next pass.
    A file is marked exported once the object store has it (a copy sent twice is the same key and
    bytes); one missing from the local disk is logged and passed over."""

    def __init__(self, store: RowStore, objects: ObjectStore, most: int = 100) -> None:
        self.store = store
        self.objects = objects
        self.most = most  # files per pass: a long history (an upgraded index) goes out in steps

    def key(self, model: str, name: str) -> str:
        """Where a file of the store goes: its partition directory kept, its name prefixed with
        the store's writer name."""
        partition, _, file = name.rpartition("/")
        return "/".join(p for p in (PREFIX, model, partition, f"{self.store.writer}-{file}") if p)

    async def export(self) -> int:
        """Copy up to `most` pending files; how many were copied."""
        copied = 0
        for model in await asyncio.to_thread(self.store.models):
            for name, path in await asyncio.to_thread(self.store.unexported, model):
                if copied >= self.most:
                    return copied
                try:
                    data = await asyncio.to_thread(path.read_bytes)
                except FileNotFoundError:
                    log.error("offline file %s is gone from disk: not exported", path)
                    await asyncio.to_thread(self.store.mark_exported, model, [name])
                    continue
                await self.objects.put(self.key(model, name), data)
                await asyncio.to_thread(self.store.mark_exported, model, [name])
                copied += 1
        return copied

    async def run(self, every_s: float) -> None:
        """Export every `every_s` seconds, for as long as the service runs."""
        while True:
            try:
                while await self.export() >= self.most:  # a backlog: keep going
                    await asyncio.sleep(0)
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("exporting the offline store failed; next time")
                else:
                    log.warning("exporting the offline store: %s; next time", exc)
            await asyncio.sleep(every_s)
