"""Feature use case: validated observations → feature rows on the bus and in the online store."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime

import orjson
from aiokafka import ConsumerRecord

from driftloop.aggregates import Changes, History
from driftloop.checkpoint import Checkpoint
from driftloop.fastpath import Handled, Outbox, Output
from driftloop.features import FeatureSet
from driftloop.kafka import dead_letter
from driftloop.observations import CheckedBatch, checkers
from driftloop.online import OnlineStore, Row
from driftloop.settings import Topics
from driftloop.spec import ModelSpec
from driftloop.specbook import Derived
from driftloop_feature.domain import check_batch, feature_rows
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
        self.feature_sets = Derived(specs, FeatureSet)  # made again when a spec changes
        self.online = online
        self.topics = topics
        self.cache = cache if cache is not None else HistoryCache(max_entities=0, ttl_s=0)
        # the online-store writes under way; partitions changed hands or a batch comes again: the
        # cache goes (Redis holds the histories)
        self.checkpoint = Checkpoint()
        self.checkpoint.on_rewind(self.cache.clear)

    async def handle(self, records: Sequence[ConsumerRecord]) -> Handled:
        """Feature rows to `features.computed` (keyed like their observation), the invalid to the
        DLQ, and alongside, the entities' latest raw features and histories to the online store
        (the commit waits for it; the next batch is handled meanwhile, once the write before has
        landed: writes stay in order, and a history read from Redis has every earlier event).
        Redelivery is harmless: a history counts an event once, and rows are idempotent by event id."""
        specs = dict(self.specs)  # one spec per model for the whole batch, whatever is applied meanwhile
        valid, errors = check_batch([r.value for r in records], specs, self.checks)
        await self.checkpoint.settled_effects()  # the writes before: a failure fails its own batch
        histories = await self._histories(valid, specs)
        topic = self.topics.features_computed
        outputs = []
        for model, batch in valid.items():
            rows, refused = feature_rows(self.feature_sets.of(specs[model]), batch, histories.get(model, {}))
            errors.update(refused)
            outputs += [
                Output(topic, (r["entity_id"] or r["event_id"]).encode(), orjson.dumps(r)) for r in rows
            ]
        changes: dict[Key, Changes] = {}
        for model, held in histories.items():
            self.cache.put(((model, entity), history) for entity, history in held.items())
            changes.update(((model, entity), history.changes()) for entity, history in held.items())
        writing = asyncio.create_task(self.online.write(self._latest(valid, changes)))
        dead = [dead_letter(SERVICE, records[i], e.reason, e.detail) for i, e in sorted(errors.items())]
        out = Outbox(self.topics.events_dlq, outputs)
        out.dead_letters(dead)
        return out.handled(alongside=writing)

    async def _histories(
        self, valid: Mapping[str, CheckedBatch], specs: Mapping[str, ModelSpec]
    ) -> dict[str, dict[str, History]]:
        """The histories of the batch's entities, by model, for the models that declare
        aggregates: from the cache, else from the online store."""
        held: dict[str, dict[str, History]] = {}
        missing = []
        for model, batch in valid.items():
            if not specs[model].aggregates:
                continue
            held[model] = {}
            for entity in dict.fromkeys(o.entity_id for o in batch.observations if o.entity_id):
                cached = self.cache.get((model, entity))
                if cached is None:
                    missing.append((model, entity))
                else:
                    held[model][entity] = cached
        for (model, entity), stored in (await self.online.entities(missing)).items():
            held[model][entity] = History.from_fields(specs[model], stored)
        return held

    def _latest(self, valid: Mapping[str, CheckedBatch], histories: Mapping[Key, Changes]) -> list[Row]:
        """Per entity, its newest observation of the batch with its merged history, for the online
        store, which keeps raw features (aggregates are recomputed as of each request)."""
        out = []
        for model, batch in valid.items():
            newest: dict[str, tuple[datetime, int]] = {}
            for k, o in enumerate(batch.observations):
                entity, when = o.entity_id, o.event_time
                assert when is not None  # checked
                if entity and (entity not in newest or when >= newest[entity][0]):
                    newest[entity] = (when, k)
            chosen = [k for _, k in newest.values()]
            rows = batch.checker.rows(batch.numbers[chosen], [batch.strings[k] for k in chosen])
            for (entity, (when, _)), values in zip(newest.items(), rows, strict=True):
                out.append((model, entity, when, values, histories.get((model, entity), ({}, []))))
        return out
