"""Validation of raw observations against their model spec: pure, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from driftloop.contracts import InvalidInput, Observation, parse
from driftloop.features import check_features
from driftloop.spec import ModelSpec


def as_utc(moment: datetime) -> datetime:
    """A timezone-aware UTC datetime (naive input is taken as UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def validate_observation(
    raw: bytes | None,
    specs: Mapping[str, ModelSpec],
    now: datetime,
    max_future: timedelta,
) -> Observation:
    """The observation, normalised (defaults, canonical label, UTC event time); or `InvalidInput`."""
    observation = parse(Observation, raw)
    spec = specs.get(observation.model)
    if spec is None:
        raise InvalidInput("unknown_model", f"no spec for model {observation.model!r:.80}")
    features = check_features(spec, observation.features)
    label = None
    if observation.label is not None:
        label = spec.label_of(observation.label)
        if label is None:
            raise InvalidInput(
                "invalid_label", f"label {observation.label!r:.80} not in {spec.label.classes}"
            )
    event_time = as_utc(observation.event_time) if observation.event_time else now
    if event_time > now + max_future:
        raise InvalidInput("event_time_in_future", f"event_time {event_time.isoformat()}")
    return observation.model_copy(update={"features": features, "label": label, "event_time": event_time})
