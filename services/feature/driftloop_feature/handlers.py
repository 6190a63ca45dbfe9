"""Feature use case: validated observations → feature rows on the bus and in the online store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aiokafka import ConsumerRecord

from driftloop.contracts import FeatureRow, InvalidInput, Observation, parse
from driftloop.features import FeatureSet
from driftloop.kafka import Bus, triage
from driftloop.metrics import count
from driftloop.settings import Topics
from driftloop.spec import ModelSpec
from driftloop_feature.adapters import OnlineStore
from driftloop_feature.domain import compute_row

SERVICE = "feature"


class FeatureHandler:
    def __init__(self, specs: Mapping[str, ModelSpec], online: OnlineStore, bus: Bus, topics: Topics) -> None:
        self.specs = specs
        self.feature_sets = {name: FeatureSet(spec) for name, spec in specs.items()}
        self.online = online
        self.bus = bus
        self.topics = topics

    def _row(self, record: ConsumerRecord) -> tuple[dict[str, float | str], FeatureRow]:
        observation = parse(Observation, record.value, self.specs)
        spec = self.specs[observation.model]
        if observation.event_time is None:
            raise InvalidInput("missing_event_time", "validated observations carry their time")
        return compute_row(spec, self.feature_sets[spec.name], observation)

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        rows, dead = triage(SERVICE, records, self._row)
        await self.online.write(rows)
        await self.bus.publish(self.topics.features_computed, [row for _, row in rows])
        await self.bus.dead_letters(dead)
        count(SERVICE, self.topics.events_validated, "ok", len(rows))
        count(SERVICE, self.topics.events_validated, "rejected", len(dead))
