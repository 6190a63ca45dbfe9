"""Ingest use case: validate a batch, dead-letter the bad, drop duplicates, publish and store the good."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from aiokafka import ConsumerRecord

from driftloop.checkpoint import Checkpoint
from driftloop.contracts import InvalidInput, utcnow
from driftloop.fastpath import Handled, Outbox, Output
from driftloop.kafka import dead_letter
from driftloop.observations import checkers
from driftloop.settings import Topics
from driftloop.spec import ModelSpec
from driftloop.store import RowStore
from driftloop_ingest.domain import Accepted, validate_batch

SERVICE = "ingest"


def arrival(record: ConsumerRecord, now: datetime) -> datetime:
    """When a record reached the bus: its timestamp (producer or broker time), else now;
    `InvalidInput` for a timestamp no date can hold (e.g. 3e14 ms, the year 11476)."""
    if record.timestamp and record.timestamp > 0:
        try:
            return datetime.fromtimestamp(record.timestamp / 1000, UTC)
        except (ValueError, OverflowError, OSError) as exc:
            raise InvalidInput(
                "event_time_out_of_range",
                f"no event_time, and the record timestamp {record.timestamp} ms is not a date",
            ) from exc
    return now


class IngestHandler:
    def __init__(
        self, specs: Mapping[str, ModelSpec], store: RowStore, topics: Topics, max_future: timedelta
    ) -> None:
        self.specs = specs
        self.checks = checkers(specs)
        self.store = store
        self.topics = topics
        self.max_future = max_future
        # (model, event id) published by batches not yet committed: their append may be to come
        self.checkpoint = Checkpoint()

    async def handle(self, records: Sequence[ConsumerRecord]) -> Handled:
        """Validate and dedupe: the new observations to `events.validated` (keyed by entity, so an
        entity's events stay in order for its aggregates), the invalid to the DLQ; the offline store
        append follows once both are acknowledged, so a crash in between republishes (downstream is
        idempotent by event id) instead of losing the batch. An event id claimed by a batch not yet
        committed (the loop is pipelined: its append may be to come) counts as seen too."""
        self.store.ensure_space()  # a full disk stops the batch before anything is published
        now = utcnow()
        accepted, errors = validate_batch(
            [r.value for r in records],
            self.specs,
            self.checks,
            now,
            self.max_future,
            lambda i: arrival(records[i], now),
        )
        by_model: dict[str, dict[str, Accepted]] = {}
        for _, observation in sorted(accepted.items()):  # the first of several copies wins
            by_model.setdefault(observation.model, {}).setdefault(observation.event_id, observation)
        fresh: dict[str, list[Accepted]] = {}
        for model, observations in by_model.items():
            seen = self.store.known(model, list(observations))
            claimed = self.checkpoint.claimed
            fresh[model] = [
                o
                for event_id, o in observations.items()
                if event_id not in seen and not claimed((model, event_id))
            ]
            self.checkpoint.claim((model, o.event_id) for o in fresh[model])
        topic = self.topics.events_validated
        out = Outbox(
            self.topics.events_dlq, [Output(topic, o.key, o.body) for new in fresh.values() for o in new]
        )
        dead = [dead_letter(SERVICE, records[i], e.reason, e.detail) for i, e in sorted(errors.items())]
        out.dead_letters(dead)

        def store() -> None:
            for model, new in fresh.items():
                self.store.append(model, [(o.event_id, o.event_time, o.body) for o in new])

        out.count(self.topics.events_raw, "duplicate", len(accepted) - sum(map(len, fresh.values())))
        return out.handled(then=store)
