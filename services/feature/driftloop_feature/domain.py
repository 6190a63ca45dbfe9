"""Feature computation for validated observations: pure, the same code training and serving use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from driftloop.aggregates import History
from driftloop.contracts import InvalidInput, feature_row_json
from driftloop.features import Checker, FeatureSet, time_parts
from driftloop.observations import CheckedBatch, check_observations
from driftloop.spec import ModelSpec


def check_batch(
    raws: Sequence[bytes | None], specs: Mapping[str, ModelSpec], checks: Mapping[str, Checker]
) -> tuple[dict[str, CheckedBatch], dict[int, InvalidInput]]:
    """Validated observations by model (checked again: a topic may carry anything), errors by position."""
    valid, errors = check_observations(raws, specs, checks)
    for model, batch in list(valid.items()):
        timed = [o.event_time is not None for o in batch.observations]
        if all(timed):
            continue
        for i in (i for i, ok in zip(batch.positions, timed, strict=True) if not ok):
            errors[i] = InvalidInput("missing_event_time", "validated observations carry their time")
        valid[model] = batch.where(timed)
        if not valid[model]:
            del valid[model]
    return valid, errors


def model_inputs(spec: ModelSpec, batch: CheckedBatch, histories: Mapping[str, History]) -> np.ndarray:
    """Each observation's numeric model inputs, in `spec.inputs` order: its checked numeric
    features, its aggregates (`aggregate_values`), its time parts."""
    columns = [batch.numbers]
    if spec.aggregates:
        columns.append(aggregate_values(spec, batch, histories))
    if spec.time_parts:
        columns.append(
            np.array(
                [list(time_parts(spec, o.event_time).values()) for o in batch.observations],  # type: ignore[arg-type]
                dtype=np.float64,
            ).reshape(len(batch), len(spec.time_parts))
        )
    return np.hstack(columns) if len(columns) > 1 else batch.numbers.copy()


def aggregate_values(spec: ModelSpec, batch: CheckedBatch, histories: Mapping[str, History]) -> np.ndarray:
    """Each observation's per-entity aggregates (spec order) as of its event time, from its
    entity's events before it, in event-time order; each event then joins its entity's history.
    Observations without an entity keep the aggregates' default (0)."""
    out = [[0.0] * len(spec.aggregates) for _ in range(len(batch))]
    observations = batch.observations
    at = [o.event_time.timestamp() for o in observations]  # type: ignore[union-attr]
    ordered = sorted(  # in the order histories keep events: time (epoch seconds), then id
        (k for k, o in enumerate(observations) if o.entity_id in histories),
        key=lambda k: (at[k], observations[k].event_id),
    )
    of = {name: batch.column(name) for name in {a.of for a in spec.aggregates if a.of is not None}}
    for k in ordered:
        observation = observations[k]
        history = histories[observation.entity_id]  # type: ignore[index]
        out[k] = history.vector(at[k])
        history.add(at[k], observation.event_id, {name: column[k] for name, column in of.items()})
    return np.array(out, dtype=np.float64).reshape(len(batch), len(spec.aggregates))


def feature_rows(
    feature_set: FeatureSet, batch: CheckedBatch, histories: Mapping[str, History]
) -> tuple[list[dict[str, Any]], dict[int, InvalidInput]]:
    """The `FeatureRow` of each observation (a dict orjson encodes as its JSON): its model inputs
    (`model_inputs`, which adds each event to its entity's history) encoded by the one encoder
    training and serving use; and, by position, the observations whose inputs are not finite (an
    aggregate of huge values can overflow)."""
    inputs = model_inputs(feature_set.spec, batch, histories)
    finite = np.isfinite(inputs).all(axis=1)
    errors = {
        i: InvalidInput("not_finite", "an aggregate of this event is not a finite number")
        for i, ok in zip(batch.positions, finite.tolist(), strict=True)
        if not ok
    }
    if errors:
        batch, inputs = batch.where(finite.tolist()), inputs[finite]
    X = feature_set.encode_checked(inputs, batch.strings)
    names = feature_set.names
    rows = []
    for o, label, values in zip(batch.observations, batch.labels, X.tolist(), strict=True):
        assert o.event_time is not None  # checked
        features = dict(zip(names, values, strict=True))
        rows.append(feature_row_json(o.event_id, o.model, o.entity_id, o.event_time, features, label))
    return rows, errors
