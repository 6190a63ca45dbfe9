"""Reading and checking a batch of observations against their specs: the hot-path validation that
ingest and the feature service share. Pure, no I/O."""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from pydantic import TypeAdapter, ValidationError

from driftloop.contracts import (
    PLAIN_VALUES,
    SCHEMA_VERSION,
    InvalidInput,
    Label,
    Observation,
    as_utc,
    json_object,
    parse,
)
from driftloop.features import Checker
from driftloop.spec import ModelSpec

_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)


@dataclass(slots=True)
class Observed:
    """An `Observation` as the hot paths carry it (no validation on construction)."""

    event_id: str
    model: str
    features: dict[str, Any]
    label: Label | None
    event_time: datetime | None
    entity_id: str | None


def read_observation(raw: bytes | None, known_models: Container[str] | None = None) -> Observed:
    """An observation from its bytes, as the `Observation` contract reads it. A plain one (every
    field of exactly its contract type) is read with orjson alone; anything else goes through the
    contract, which accepts or refuses it with a reason (`InvalidInput`). A property test holds
    both paths equal."""
    data = json_object(raw)
    if data is not None:
        event_id, model, features = data.get("event_id"), data.get("model"), data.get("features")
        label, event_time, entity_id = data.get("label"), data.get("event_time"), data.get("entity_id")
        if (
            type(event_id) is str
            and 0 < len(event_id) <= 256
            and type(model) is str
            and (known_models is None or model in known_models)
            and type(features) is dict
            and set(map(type, features.values())) <= PLAIN_VALUES
            and type(label) in PLAIN_VALUES
            and type(entity_id) in (str, type(None))
            and type(data.get("schema_version", SCHEMA_VERSION)) is int
            and type(event_time) in (str, type(None))
        ):
            try:
                when = None if event_time is None else _DATETIME.validate_python(event_time)
            except ValidationError:
                pass  # `parse` words the error
            else:
                return Observed(event_id, model, features, label, when, entity_id)
    o = parse(Observation, raw, known_models)
    return Observed(o.event_id, o.model, dict(o.features), o.label, o.event_time, o.entity_id)


def utc_event_time(moment: datetime) -> datetime:
    """An event time in UTC (naive is taken as UTC), or `InvalidInput` when it has no UTC
    equivalent (e.g. 9999-12-31T23:59:59-01:00)."""
    try:
        return as_utc(moment)
    except OverflowError:
        raise InvalidInput(
            "event_time_out_of_range", f"event_time {moment.isoformat()} is outside the years 1-9999 in UTC"
        ) from None


class Checked(NamedTuple):
    """A readable observation whose raw features and label passed its spec."""

    position: int  # in the batch
    observation: Observed
    features: dict[str, float | str]  # validated raw values, defaults filled in
    label: Label | None  # the spec's own class


def checkers(specs: Mapping[str, ModelSpec]) -> dict[str, Checker]:
    """The batch validator of each model's raw features."""
    return {name: Checker(spec.features) for name, spec in specs.items()}


def check_observations(
    raws: Sequence[bytes | None], specs: Mapping[str, ModelSpec], checks: Mapping[str, Checker]
) -> tuple[dict[str, list[Checked]], dict[int, InvalidInput]]:
    """The valid observations by model, in batch order, event times in UTC, and why each other one
    is invalid, by position. A label outside the spec's classes is an error, never "unlabelled"."""
    errors: dict[int, InvalidInput] = {}
    by_model: dict[str, list[tuple[int, Observed]]] = {}
    for i, raw in enumerate(raws):
        try:
            observation = read_observation(raw, specs)
            if observation.event_time is not None:
                observation.event_time = utc_event_time(observation.event_time)
        except InvalidInput as exc:
            errors[i] = exc
        else:
            by_model.setdefault(observation.model, []).append((i, observation))
    valid: dict[str, list[Checked]] = {}
    for model, batch in by_model.items():
        spec = specs[model]
        clean, refused = checks[model].check_many([o.features for _, o in batch])
        for k, refusal in refused.items():
            errors[batch[k][0]] = refusal
        for k in sorted(clean):
            i, observation = batch[k]
            label = None if observation.label is None else spec.label_of(observation.label)
            if observation.label is not None and label is None:
                errors[i] = InvalidInput(
                    "invalid_label", f"label {observation.label!r:.80} not in {spec.label.classes}"
                )
            else:
                valid.setdefault(model, []).append(Checked(i, observation, clean[k], label))
    return valid, errors
