"""Ingest use case: validate a batch, dead-letter the bad, drop duplicates, publish and store the good."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta

from aiokafka import ConsumerRecord

from driftloop.contracts import DeadLetter, InvalidInput, Observation, utcnow
from driftloop.kafka import Bus, dead_letter, encode
from driftloop.metrics import DEAD_LETTERS, count
from driftloop.settings import Topics
from driftloop.spec import ModelSpec
from driftloop.store import RowStore
from driftloop_ingest.domain import validate_observation

SERVICE = "ingest"
log = logging.getLogger(__name__)


class IngestHandler:
    def __init__(
        self,
        specs: Mapping[str, ModelSpec],
        store: RowStore,
        bus: Bus,
        topics: Topics,
        max_future: timedelta,
    ) -> None:
        self.specs = specs
        self.store = store
        self.bus = bus
        self.topics = topics
        self.max_future = max_future

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        """Validate, dedupe, publish `events.validated`, dead-letter, then append to the store.

        Publishing comes before the store append: a crash in between redelivers the batch and
        republishes (downstream is idempotent by event id) instead of losing it.
        """
        now = utcnow()
        valid: dict[str, Observation] = {}
        dead: list[DeadLetter] = []
        duplicates = 0
        for record in records:
            try:
                obs = validate_observation(record.value, self.specs, now, self.max_future)
            except InvalidInput as exc:
                dead.append(dead_letter(SERVICE, record, exc.reason, exc.detail))
                continue
            key = f"{obs.model}\0{obs.event_id}"
            if key in valid:
                duplicates += 1
                continue
            valid[key] = obs
        by_model: dict[str, list[Observation]] = {}
        for obs in valid.values():
            by_model.setdefault(obs.model, []).append(obs)
        fresh: list[Observation] = []
        for model, observations in by_model.items():
            seen = self.store.known(model, [o.event_id for o in observations])
            duplicates += len(seen)
            fresh += [o for o in observations if o.event_id not in seen]

        await self.bus.publish(self.topics.events_validated, fresh)
        await self.bus.publish(self.topics.events_dlq, dead)
        for model, observations in by_model.items():
            self.store.append(
                model,
                [(o.event_id, o.event_time, encode(o)) for o in observations if o.event_time],
            )

        for letter in dead:
            DEAD_LETTERS.labels(SERVICE, letter.reason).inc()
        count(SERVICE, self.topics.events_raw, "ok", len(fresh))
        count(SERVICE, self.topics.events_raw, "rejected", len(dead))
        count(SERVICE, self.topics.events_raw, "duplicate", duplicates)
