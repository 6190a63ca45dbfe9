"""Feature use case: validated observations → feature rows on the bus and in the online store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aiokafka import ConsumerRecord

from driftloop.aggregates import History
from driftloop.contracts import Observation, parse
from driftloop.features import FeatureSet
from driftloop.kafka import Bus, triage
from driftloop.metrics import count
from driftloop.settings import Topics
from driftloop.spec import ModelSpec
from driftloop_feature.adapters import OnlineStore
from driftloop_feature.domain import feature_row, validate, with_aggregates

SERVICE = "feature"

Row = tuple[Observation, dict[str, float | str]]


class FeatureHandler:
    def __init__(self, specs: Mapping[str, ModelSpec], online: OnlineStore, bus: Bus, topics: Topics) -> None:
        self.specs = specs
        self.feature_sets = {name: FeatureSet(spec) for name, spec in specs.items()}
        self.online = online
        self.bus = bus
        self.topics = topics

    def _validated(self, record: ConsumerRecord) -> Row:
        observation = parse(Observation, record.value, self.specs)
        return observation, validate(self.specs[observation.model], observation)

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        valid, dead = triage(SERVICE, records, self._validated)
        histories = await self._aggregate(valid)
        rows = [feature_row(self.specs[o.model], self.feature_sets[o.model], o, clean) for o, clean in valid]
        raw = [  # the online store keeps raw features; aggregates are recomputed at serving time
            ({f.name: clean[f.name] for f in self.specs[o.model].features}, row)
            for (o, clean), row in zip(valid, rows, strict=True)
        ]
        await self.online.write(raw, histories)
        await self.bus.publish(self.topics.features_computed, rows)
        await self.bus.dead_letters(dead)
        count(SERVICE, self.topics.events_validated, "ok", len(rows))
        count(SERVICE, self.topics.events_validated, "rejected", len(dead))

    async def _aggregate(self, valid: Sequence[Row]) -> dict[tuple[str, str], bytes]:
        """Per-entity aggregates, point in time, for the models that declare them; the updated
        histories by (model, entity), to store."""
        by_model: dict[str, list[Row]] = {}
        for observation, clean in valid:
            if self.specs[observation.model].aggregates and observation.entity_id:
                by_model.setdefault(observation.model, []).append((observation, clean))
        keys = [(m, o.entity_id) for m, rows in by_model.items() for o, _ in rows if o.entity_id]
        stored = await self.online.histories(list(dict.fromkeys(keys)))
        updated: dict[tuple[str, str], bytes] = {}
        for model, rows in by_model.items():
            spec = self.specs[model]
            histories = {e: h for (m, e), h in stored.items() if m == model}
            loaded = {e: History.loads(spec, raw) for e, raw in histories.items()}
            with_aggregates(spec, rows, loaded)
            updated.update({(model, e): h.dumps() for e, h in loaded.items()})
        return updated
