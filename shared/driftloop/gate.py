"""The promotion gate, pure: the registry decides with it, and so does `driftloop backtest`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist

from driftloop.contracts import ModelTrained, PairedComparison
from driftloop.spec import ModelSpec


@dataclass(frozen=True)
class Decision:
    blessed: bool
    reason: str


@dataclass(frozen=True)
class Evidence:
    """What the gate weighs: the candidate's metrics on the holdout, the champion's on the same rows
    and their row-by-row comparison, and the ONNX conversion's largest probability difference."""

    candidate_metrics: Mapping[str, float]
    champion_metrics: Mapping[str, float] | None
    champion_version: int | None
    holdout_rows: int
    comparison: PairedComparison | None
    parity_max_abs_diff: float = 0.0

    @classmethod
    def of(cls, trained: ModelTrained) -> Evidence:
        return cls(
            trained.candidate_metrics,
            trained.champion_metrics,
            trained.champion_version,
            trained.dataset.holdout_rows,
            trained.comparison,
            trained.parity_max_abs_diff,
        )


def gate(spec: ModelSpec, trained: Evidence) -> Decision:
    """Bless a candidate that converts faithfully, clears the floor and does not trail the champion.

    Against a champion, the holdout must hold `gate.min_holdout_rows`. With `gate.confidence`, the
    row-by-row comparison on that holdout decides: the candidate is rejected only when even the
    optimistic end of the confidence bound trails the champion by more than `max_regression`, so
    sampling noise on a small holdout does not turn away a model trained on newer rows. Without
    it (or without the comparison), the two point estimates are compared.
    """
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
    if champion is None:
        return Decision(True, f"{rules.metric} {value:.4f} (no champion)")
    versus = f"champion v{trained.champion_version} ({champion:.4f})"
    held = trained.holdout_rows
    if held < rules.min_holdout_rows:
        return Decision(False, f"holdout of {held} rows is below min_holdout_rows ({rules.min_holdout_rows})")
    paired = trained.comparison
    if paired is not None and paired.rows < rules.min_holdout_rows:
        # the champion was fitted on most of the holdout: too few rows are fair to both; the
        # candidate is fitted on newer rows and cleared the floor
        return Decision(
            True,
            f"{rules.metric} {value:.4f}; {versus} saw all but {paired.rows} holdout rows: "
            "too few to compare",
        )
    if rules.confidence is not None and paired is not None:
        z = NormalDist().inv_cdf(rules.confidence)
        optimistic = paired.mean_difference + z * paired.std_error
        bound = f"{paired.mean_difference:+.4f}, {rules.confidence:.0%} bound {optimistic:+.4f}"
        if optimistic < -rules.max_regression:
            return Decision(
                False,
                f"{rules.metric} {value:.4f} trails {versus} by more than {rules.max_regression} ({bound})",
            )
        return Decision(True, f"{rules.metric} {value:.4f} vs {versus} ({bound} on {paired.rows} rows)")
    if sign * (value - champion) < -rules.max_regression:
        return Decision(
            False, f"{rules.metric} {value:.4f} trails {versus} by more than {rules.max_regression}"
        )
    return Decision(True, f"{rules.metric} {value:.4f} vs {versus}")
