"""Feature computation for validated observations: pure, the same code training and serving use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from driftloop.aggregates import History
from driftloop.contracts import FeatureRow, InvalidInput, Observation
from driftloop.features import FeatureSet, check_features
from driftloop.spec import ModelSpec


def validate(spec: ModelSpec, observation: Observation) -> dict[str, float | str]:
    """Validated raw values of an observation (validated again: a topic may carry anything)."""
    if observation.event_time is None:
        raise InvalidInput("missing_event_time", "validated observations carry their time")
    clean = check_features(spec, observation.features)
    if observation.label is not None and spec.label_of(observation.label) is None:
        # never turn a wrong label into "unlabelled"
        raise InvalidInput("invalid_label", f"label {observation.label!r:.80} not in {spec.label.classes}")
    return clean


def with_aggregates(
    spec: ModelSpec,
    rows: Sequence[tuple[Observation, dict[str, float | str]]],
    histories: Mapping[str, History],
) -> None:
    """Fill in each row's per-entity aggregates as of its event time, from the entity's events
    before it, in event-time order; each event then joins its entity's history. Rows without an
    entity keep the aggregates' default (0)."""
    ordered = sorted(
        (r for r in rows if r[0].entity_id in histories),
        key=lambda r: (r[0].event_time, r[0].event_id),  # type: ignore[arg-type,return-value]
    )
    for observation, clean in ordered:
        assert observation.entity_id is not None and observation.event_time is not None
        history = histories[observation.entity_id]
        at = observation.event_time.timestamp()
        clean.update(history.values(at))
        history.add(at, observation.event_id, clean)


def feature_row(
    spec: ModelSpec, feature_set: FeatureSet, observation: Observation, clean: Mapping[str, float | str]
) -> FeatureRow:
    """The encoded feature row of an observation (aggregates included)."""
    assert observation.event_time is not None
    return FeatureRow(
        event_id=observation.event_id,
        model=observation.model,
        entity_id=observation.entity_id,
        event_time=observation.event_time,
        features=feature_set.named(clean),
        label=None if observation.label is None else spec.label_of(observation.label),
    )
