"""Reading and checking a batch of observations against their specs: the hot-path validation that
ingest and the feature service share. Pure, no I/O."""

from __future__ import annotations

import re
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import compress
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from driftloop.contracts import (
    InvalidInput,
    Label,
    Observation,
    as_utc,
    json_object,
    parse,
    plain_observation,
)
from driftloop.features import Checker
from driftloop.spec import ModelSpec
from driftloop.specbook import Derived

_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)
_UTC_TEXT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{6})?\+00:00", re.ASCII)  # as ingest writes


def _event_time(text: str) -> datetime:
    """An event time as the contract reads it. The form ingest writes (`isoformat()` of a UTC
    time) is read by the standard library, ~3x faster, and comes back in `UTC` (no conversion
    later); anything else, or a form it refuses, by the contract's parser."""
    if _UTC_TEXT.fullmatch(text):
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass
    return _DATETIME.validate_python(text)


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
    if data is not None and plain_observation(data, known_models):
        event_time = data.get("event_time")
        try:
            when = None if event_time is None else _event_time(event_time)
        except ValidationError:
            pass  # `parse` words the error
        else:
            features, label, entity_id = data["features"], data.get("label"), data.get("entity_id")
            return Observed(data["event_id"], data["model"], features, label, when, entity_id)
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


@dataclass(slots=True)
class CheckedBatch:
    """One model's observations of a batch that passed its spec: readable, raw features and label
    valid. The checked raw values are columns, in the order of the model's `Checker`."""

    positions: list[int]  # in the batch
    observations: list[Observed]
    numbers: np.ndarray  # numeric features, float64, one row per observation
    strings: list[tuple[str, ...]]  # categorical features, one tuple per observation
    labels: list[Label | None]  # the spec's own class
    checker: Checker  # what checked them: its `numeric` and `categorical` name the columns

    def __len__(self) -> int:
        return len(self.positions)

    def rows(self) -> list[dict[str, float | str]]:
        """Each observation's checked raw values by feature name."""
        return self.checker.rows(self.numbers, self.strings)

    def column(self, name: str) -> list[float]:
        """The checked values of one numeric feature."""
        return self.numbers[:, [f.name for f in self.checker.numeric].index(name)].tolist()

    def where(self, keep: Sequence[bool]) -> CheckedBatch:
        """The observations where `keep` is true."""
        return CheckedBatch(
            list(compress(self.positions, keep)),
            list(compress(self.observations, keep)),
            self.numbers[np.asarray(keep, dtype=bool)],
            list(compress(self.strings, keep)),
            list(compress(self.labels, keep)),
            self.checker,
        )


def checkers(specs: Mapping[str, ModelSpec]) -> Mapping[str, Checker]:
    """The batch validator of each model's raw features (made again when a spec changes)."""
    return Derived(specs, lambda spec: Checker(spec.features))


def check_observations(
    raws: Sequence[bytes | None], specs: Mapping[str, ModelSpec], checks: Mapping[str, Checker]
) -> tuple[dict[str, CheckedBatch], dict[int, InvalidInput]]:
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
    valid: dict[str, CheckedBatch] = {}
    for model, batch in by_model.items():
        spec = specs[model]
        X, strings, index, refused = checks[model].check_columns([o.features for _, o in batch])
        for k, refusal in refused.items():
            errors[batch[k][0]] = refusal
        checked = CheckedBatch(
            [batch[k][0] for k in index], [batch[k][1] for k in index], X, strings, [], checks[model]
        )
        labelled = []
        classes: dict[tuple[type, Any], Label | None] = {}  # label_of of each label value seen
        for i, observation in zip(checked.positions, checked.observations, strict=True):
            value = observation.label
            if (type(value), value) not in classes:
                classes[(type(value), value)] = None if value is None else spec.label_of(value)
            label = classes[(type(value), value)]
            labelled.append(value is None or label is not None)
            if not labelled[-1]:
                errors[i] = InvalidInput(
                    "invalid_label", f"label {observation.label!r:.80} not in {spec.label.classes}"
                )
            checked.labels.append(label)
        if not all(labelled):
            checked = checked.where(labelled)
        if checked.positions:
            valid[model] = checked
    return valid, errors
