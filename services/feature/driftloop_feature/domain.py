"""Feature computation for validated observations: pure, the same code training and serving use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from driftloop.aggregates import History
from driftloop.contracts import InvalidInput, feature_row_json
from driftloop.features import Checker, FeatureSet, time_parts
from driftloop.observations import Checked, check_observations
from driftloop.spec import ModelSpec


def check_batch(
    raws: Sequence[bytes | None], specs: Mapping[str, ModelSpec], checks: Mapping[str, Checker]
) -> tuple[dict[str, list[Checked]], dict[int, InvalidInput]]:
    """Validated observations by model (checked again: a topic may carry anything), errors by position."""
    valid, errors = check_observations(raws, specs, checks)
    for model, rows in valid.items():
        timeless = [row for row in rows if row.observation.event_time is None]
        for row in timeless:
            errors[row.position] = InvalidInput(
                "missing_event_time", "validated observations carry their time"
            )
        if timeless:
            valid[model] = [row for row in rows if row.observation.event_time is not None]
    return valid, errors


def with_aggregates(spec: ModelSpec, rows: Sequence[Checked], histories: Mapping[str, History]) -> None:
    """Fill in each row's per-entity aggregates as of its event time, from the entity's events
    before it, in event-time order; each event then joins its entity's history. Rows without an
    entity keep the aggregates' default (0)."""
    ordered = sorted(
        (r for r in rows if r.observation.entity_id in histories),
        key=lambda r: (r.observation.event_time, r.observation.event_id),  # type: ignore[arg-type,return-value]
    )
    for row in ordered:
        observation = row.observation
        assert observation.entity_id is not None and observation.event_time is not None
        history = histories[observation.entity_id]
        at = observation.event_time.timestamp()
        row.features.update(history.values(at))
        history.add(at, observation.event_id, row.features)


def with_time_parts(spec: ModelSpec, rows: Sequence[Checked]) -> None:
    """Fill in each row's time-part inputs from its event time."""
    for row in rows:
        assert row.observation.event_time is not None  # checked
        row.features.update(time_parts(spec, row.observation.event_time))


def feature_rows(feature_set: FeatureSet, rows: Sequence[Checked]) -> list[dict[str, Any]]:
    """The `FeatureRow` (JSON-ready) of each validated row, aggregates included: encoded at once by
    the one encoder training and serving use."""
    X, encoded, errors = feature_set.encode_many([row.features for row in rows], dtype=None)
    if errors:  # cannot happen: the rows were validated, and aggregates are numbers
        raise next(iter(errors.values()))
    names = feature_set.names
    out = []
    for row, values in zip([rows[i] for i in encoded], X.tolist(), strict=True):
        o = row.observation
        assert o.event_time is not None
        out.append(
            feature_row_json(
                o.event_id,
                o.model,
                o.entity_id,
                o.event_time,
                dict(zip(names, values, strict=True)),
                row.label,
            )
        )
    return out
