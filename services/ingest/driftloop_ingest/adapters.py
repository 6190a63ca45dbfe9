"""The offline store's files in the object store: each Parquet file ingest writes is copied to
`offline/<model>/<partition>/<file>` under the object store's URL once it is indexed, so any
Parquet reader (pyarrow, duckdb, Spark) reads the offline store without ingest's disk."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from driftloop.objects import ObjectStore
from driftloop.store import RowStore

log = logging.getLogger(__name__)

PREFIX = "offline"


class OfflineExport:
    """Copies every file of a row store not yet exported. A file is marked exported only once the
    object store has it, so a failure (`Unavailable`: the batch is retried) leaves it pending, and
    the next export sends it again (same key, same bytes)."""

    def __init__(self, store: RowStore, objects: ObjectStore) -> None:
        self.store = store
        self.objects = objects

    async def export(self, models: Iterable[str] | None = None) -> int:
        """Copy the pending files of `models` (all by default); how many were copied."""
        copied = 0
        for model in self.store.models() if models is None else models:
            for name, path in await asyncio.to_thread(self.store.unexported, model):
                data = await asyncio.to_thread(path.read_bytes)
                await self.objects.put(f"{PREFIX}/{model}/{name}", data)
                await asyncio.to_thread(self.store.mark_exported, model, [name])
                copied += 1
        return copied
