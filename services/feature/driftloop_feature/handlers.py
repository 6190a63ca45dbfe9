"""Feature use case: validated observations → feature rows on the bus and in the online store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aiokafka import ConsumerRecord

from driftloop.contracts import DeadLetter, FeatureRow, InvalidInput, Observation, parse
from driftloop.features import FeatureSet
from driftloop.kafka import Bus, dead_letter
from driftloop.metrics import DEAD_LETTERS, count
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

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        rows: list[tuple[dict[str, float | str], FeatureRow]] = []
        dead: list[DeadLetter] = []
        for record in records:
            try:
                observation = parse(Observation, record.value)
                spec = self.specs.get(observation.model)
                if spec is None or observation.event_time is None:
                    raise InvalidInput("unknown_model", f"{observation.model!r:.80} or no time")
                rows.append(compute_row(spec, self.feature_sets[spec.name], observation))
            except InvalidInput as exc:
                dead.append(dead_letter(SERVICE, record, exc.reason, exc.detail))
        await self.online.write(rows)
        await self.bus.publish(self.topics.features_computed, [row for _, row in rows])
        await self.bus.publish(self.topics.events_dlq, dead)
        for letter in dead:
            DEAD_LETTERS.labels(SERVICE, letter.reason).inc()
        count(SERVICE, self.topics.events_validated, "ok", len(rows))
        count(SERVICE, self.topics.events_validated, "rejected", len(dead))
