"""The promotion gate: pure rules from the spec over a candidate's and champion's metrics."""

from __future__ import annotations

from dataclasses import dataclass

from driftloop.contracts import ModelTrained
from driftloop.spec import ModelSpec


@dataclass(frozen=True)
class Decision:
    blessed: bool
    reason: str


def gate(spec: ModelSpec, trained: ModelTrained) -> Decision:
    """Bless a candidate that converts faithfully, clears the floor and does not trail the champion."""
    rules = spec.gate
    if trained.parity_max_abs_diff > spec.training.parity_tolerance:
        return Decision(
            False,
            f"onnx parity {trained.parity_max_abs_diff:.2e} above tolerance "
            f"{spec.training.parity_tolerance:.2e}",
        )
    value = trained.candidate_metrics.get(rules.metric)
    if value is None:
        return Decision(False, f"candidate has no {rules.metric}")
    lower_is_better = rules.metric == "log_loss"
    sign = -1.0 if lower_is_better else 1.0
    if sign * value < sign * rules.floor:
        return Decision(False, f"{rules.metric} {value:.4f} fails floor {rules.floor}")
    champion = (trained.champion_metrics or {}).get(rules.metric)
    if champion is not None and sign * (value - champion) < -rules.max_regression:
        return Decision(
            False,
            f"{rules.metric} {value:.4f} trails champion v{trained.champion_version} "
            f"({champion:.4f}) by more than {rules.max_regression}",
        )
    against = f" vs champion {champion:.4f}" if champion is not None else " (no champion)"
    return Decision(True, f"{rules.metric} {value:.4f}{against}")
