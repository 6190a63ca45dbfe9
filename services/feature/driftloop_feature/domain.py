"""Feature computation for one validated observation: pure, the same code training and serving use."""

from __future__ import annotations

from driftloop.contracts import FeatureRow, InvalidInput, Observation
from driftloop.features import FeatureSet, check_features
from driftloop.spec import ModelSpec


def compute_row(
    spec: ModelSpec, feature_set: FeatureSet, observation: Observation
) -> tuple[dict[str, float | str], FeatureRow]:
    """Validated raw values and the feature row of an observation (validated again: a topic may
    carry anything)."""
    clean = check_features(spec, observation.features)
    label = None if observation.label is None else spec.label_of(observation.label)
    if observation.label is not None and label is None:  # never turn a wrong label into "unlabelled"
        raise InvalidInput("invalid_label", f"label {observation.label!r:.80} not in {spec.label.classes}")
    assert observation.event_time is not None
    return clean, FeatureRow(
        event_id=observation.event_id,
        model=observation.model,
        entity_id=observation.entity_id,
        event_time=observation.event_time,
        features=feature_set.named(clean),
        label=label,
    )
