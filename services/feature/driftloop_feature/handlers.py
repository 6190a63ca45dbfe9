"""Feature use case: validated observations → feature rows on the bus and in the online store."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime

import orjson
from aiokafka import ConsumerRecord

from driftloop.aggregates import Changes, History
from driftloop.fastpath import Handled, Output, dead_letter_outputs
from driftloop.features import FeatureSet
from driftloop.kafka import dead_letter
from driftloop.metrics import count
from driftloop.observations import Checked, checkers
from driftloop.settings import Topics
from driftloop.spec import ModelSpec
from driftloop_feature.adapters import OnlineStore, Row
from driftloop_feature.domain import check_batch, feature_rows, with_aggregates, with_time_parts
from driftloop_feature.histories import HistoryCache, Key

SERVICE = "feature"


class FeatureHandler:
    def __init__(
        self,
        specs: Mapping[str, ModelSpec],
        online: OnlineStore,
        topics: Topics,
        cache: HistoryCache | None = None,
    ) -> None:
        self.specs = specs
        self.checks = checkers(specs)
        self.feature_sets = {name: FeatureSet(spec) for name, spec in specs.items()}
        self.online = online
        self.topics = topics
        self.cache = cache if cache is not None else HistoryCache(max_entities=0, ttl_s=0)
        self._writing: asyncio.Task[None] | None = None  # the last online-store write

    def reset(self) -> None:
        """Partitions changed hands or a batch comes again: Redis holds the histories."""
        self.cache.clear()

    async def handle(self, records: Sequence[ConsumerRecord]) -> Handled:
        """Feature rows to `features.computed` (keyed like their observation), the invalid to the
        DLQ, and alongside, the entities' latest raw features and histories to the online store
        (the commit waits for it; the next batch is handled meanwhile, once the write before has
        landed: writes stay in order, and a history read from Redis has every earlier event).
        Redelivery is harmless: a history counts an event once, and rows are idempotent by event id."""
        valid, errors = check_batch([r.value for r in records], self.specs, self.checks)
        if self._writing is not None:
            await asyncio.wait({self._writing})  # its failure fails its own batch, then this one
        changes = await self._aggregate(valid)
        for model, rows in valid.items():
            with_time_parts(self.specs[model], rows)
        self._writing = asyncio.create_task(self.online.write(self._latest(valid, changes)))
        self._writing.add_done_callback(_retrieved)  # a rewound batch's failed write is not awaited
        topic = self.topics.features_computed
        outputs = [
            Output(topic, (row["entity_id"] or row["event_id"]).encode(), orjson.dumps(row))
            for model, rows in valid.items()
            for row in feature_rows(self.feature_sets[model], rows)
        ]
        dead = [dead_letter(SERVICE, records[i], e.reason, e.detail) for i, e in sorted(errors.items())]
        outputs += dead_letter_outputs(SERVICE, self.topics.events_dlq, dead)
        count(SERVICE, self.topics.events_validated, "ok", len(outputs) - len(dead))
        count(SERVICE, self.topics.events_validated, "rejected", len(dead))
        return Handled(outputs, alongside=self._writing)

    async def _aggregate(self, valid: Mapping[str, Sequence[Checked]]) -> dict[Key, Changes]:
        """Per-entity aggregates, point in time, for the models that declare them; what changed in
        each entity's history, to store."""
        keys = [
            (model, row.observation.entity_id)
            for model, rows in valid.items()
            if self.specs[model].aggregates
            for row in rows
            if row.observation.entity_id
        ]
        histories: dict[tuple[str, str], History] = {}
        missing = []
        for key in dict.fromkeys(keys):
            cached = self.cache.get(key)
            if cached is None:
                missing.append(key)
            else:
                histories[key] = cached
        for (model, entity), stored in (await self.online.entities(missing)).items():
            histories[(model, entity)] = History.from_fields(self.specs[model], stored)
        for model, rows in valid.items():
            if self.specs[model].aggregates:
                with_aggregates(
                    self.specs[model], rows, {e: h for (m, e), h in histories.items() if m == model}
                )
        self.cache.put(histories.items())
        return {key: history.changes() for key, history in histories.items()}

    def _latest(self, valid: Mapping[str, Sequence[Checked]], histories: Mapping[Key, Changes]) -> list[Row]:
        """Per entity, its newest observation of the batch with its merged history, for the online
        store, which keeps raw features (aggregates are recomputed as of each request)."""
        newest: dict[tuple[str, str], tuple[datetime, Checked]] = {}
        for model, rows in valid.items():
            for row in rows:
                entity, when = row.observation.entity_id, row.observation.event_time
                assert when is not None  # checked
                if entity and ((model, entity) not in newest or when >= newest[(model, entity)][0]):
                    newest[(model, entity)] = (when, row)
        out = []
        for (model, entity), (when, row) in newest.items():
            features = {f.name: row.features[f.name] for f in self.specs[model].features}
            out.append((model, entity, when, features, histories.get((model, entity), ({}, []))))
        return out


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
