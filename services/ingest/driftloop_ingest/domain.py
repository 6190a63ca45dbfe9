"""Validation of raw observations against their model spec: pure, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

import orjson

from driftloop.contracts import SCHEMA_VERSION, InvalidInput, Observation
from driftloop.features import Checker
from driftloop.observations import check_observations, checkers
from driftloop.spec import ModelSpec


class Accepted(NamedTuple):
    """A valid observation, normalised: its id, model, event time, partition key and JSON body."""

    event_id: str
    model: str
    event_time: datetime
    key: bytes  # its entity's id, else its own: an entity's events share a partition
    body: bytes


def validate_batch(
    raws: Sequence[bytes | None],
    specs: Mapping[str, ModelSpec],
    checks: Mapping[str, Checker],
    now: datetime,
    max_future: timedelta,
    arrival: Callable[[int], datetime] | None = None,
) -> tuple[dict[int, Accepted], dict[int, InvalidInput]]:
    """Each valid observation normalised (defaults filled in, canonical label, UTC event time), and
    why each other one is invalid, both by position in `raws`. An observation without an event time
    gets its arrival (`arrival(position)`: the record's timestamp, the same again when it is
    redelivered, or `InvalidInput`), else `now`."""
    valid, errors = check_observations(raws, specs, checks)
    accepted: dict[int, Accepted] = {}
    latest = now + max_future
    for model, batch in valid.items():
        rows = zip(batch.positions, batch.observations, batch.rows(), batch.labels, strict=True)
        for i, observation, features, label in rows:
            if observation.event_time is not None:
                event_time = observation.event_time  # in UTC
            else:
                try:
                    event_time = arrival(i) if arrival is not None else now
                except InvalidInput as exc:
                    errors[i] = exc
                    continue
            if event_time > latest:
                errors[i] = InvalidInput("event_time_in_future", f"event_time {event_time.isoformat()}")
                continue
            body = {
                "schema_version": SCHEMA_VERSION,
                "event_id": observation.event_id,
                "model": model,
                "features": features,
                "label": label,
                "event_time": event_time,  # UTC: orjson writes it as isoformat() does
                "entity_id": observation.entity_id,
            }
            key = (observation.entity_id or observation.event_id).encode()
            accepted[i] = Accepted(observation.event_id, model, event_time, key, orjson.dumps(body))
    return accepted, errors


def validate_observation(
    raw: bytes | None, specs: Mapping[str, ModelSpec], now: datetime, max_future: timedelta
) -> Observation:
    """One observation, normalised; or `InvalidInput`."""
    accepted, errors = validate_batch([raw], specs, checkers(specs), now, max_future)
    if errors:
        raise errors[0]
    return Observation.model_validate_json(accepted[0].body)
