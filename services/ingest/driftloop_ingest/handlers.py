"""Ingest use case: validate a batch, dead-letter the bad, drop duplicates, publish and store the good."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta

from aiokafka import ConsumerRecord

from driftloop.contracts import Observation, utcnow
from driftloop.kafka import Bus, encode, triage
from driftloop.metrics import count
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
        parsed, dead = triage(
            SERVICE, records, lambda r: validate_observation(r.value, self.specs, now, self.max_future)
        )
        by_model: dict[str, dict[str, Observation]] = {}
        for obs in parsed:  # the first of several copies in one batch wins
            by_model.setdefault(obs.model, {}).setdefault(obs.event_id, obs)
        fresh: dict[str, list[Observation]] = {}
        for model, observations in by_model.items():
            seen = self.store.known(model, list(observations))
            fresh[model] = [o for eid, o in observations.items() if eid not in seen]
        published = [o for observations in fresh.values() for o in observations]
        duplicates = len(parsed) - len(published)

        await self.bus.publish(self.topics.events_validated, published)
        await self.bus.dead_letters(dead)
        for model, new in fresh.items():
            self.store.append(model, [(o.event_id, o.event_time, encode(o)) for o in new if o.event_time])

        count(SERVICE, self.topics.events_raw, "ok", len(published))
        count(SERVICE, self.topics.events_raw, "rejected", len(dead))
        count(SERVICE, self.topics.events_raw, "duplicate", duplicates)
