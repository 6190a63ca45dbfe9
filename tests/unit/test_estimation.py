"""Confidence-based performance estimation (`driftloop.estimation`) on synthetic classifiers whose
truth is known: the estimate is unbiased when the scores are calibrated (or a version's holdout
calibrates them), its band covers the realised accuracy at the stated rate, and it follows a
covariate shift that moves inputs to where the model is unsure."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from driftloop.estimation import Calibration, estimate_accuracy


def served(rng, n, a, b, sharpen=1.0):
    """n predictions of a binary classifier: (top-class probability it serves, whether it was right).
    The true chance of class 1 is drawn from Beta(a, b) (class balance and how sure the model can
    be); the model serves it sharpened (`sharpen` > 1: overconfident), so it is calibrated at 1."""
    truth = np.clip(rng.beta(a, b, n), 1e-9, 1 - 1e-9)
    label = rng.random(n) < truth
    logit = np.log(truth / (1 - truth)) * sharpen
    shown = 1 / (1 + np.exp(-logit))
    predicted = shown >= 0.5
    return np.maximum(shown, 1 - shown), predicted == label


def windows(rng, a, b, calibration=None, sharpen=1.0, count=300, rows=500):
    """(estimate, realised accuracy) of `count` windows of `rows` predictions."""
    out = []
    for _ in range(count):
        confidence, correct = served(rng, rows, a, b, sharpen)
        out.append((estimate_accuracy(confidence, calibration), float(correct.mean())))
    return out


balance = st.floats(0.3, 3.0)  # Beta parameters: class balance and how sure the model can be


@settings(max_examples=15, deadline=None)
@given(a=balance, b=balance, seed=st.integers(0, 2**32 - 1))
def test_on_a_calibrated_model_the_estimate_is_unbiased_and_its_band_covers_at_the_stated_rate(a, b, seed):
    results = windows(np.random.default_rng(seed), a, b)
    errors = np.array([e.accuracy - realised for e, realised in results])
    assert abs(errors.mean()) < 4 * errors.std(ddof=1) / np.sqrt(len(errors)) + 1e-3, "unbiased"
    covered = np.mean([e.covers(realised) for e, realised in results])
    assert covered >= 0.92, f"a 95% band covered {covered:.1%} of the windows"  # 300 windows: 3 SE below


@settings(max_examples=10, deadline=None)
@given(a=balance, b=balance, sharpen=st.floats(1.5, 4.0), seed=st.integers(0, 2**32 - 1))
def test_an_overconfident_model_calibrated_on_its_holdout_is_estimated_without_bias(a, b, sharpen, seed):
    rng = np.random.default_rng(seed)
    holdout = 3_000
    confidence, correct = served(rng, holdout, a, b, sharpen)  # the version's holdout
    calibration = Calibration.fit(confidence, correct)
    raw = windows(rng, a, b, None, sharpen, count=100)
    results = windows(rng, a, b, calibration, sharpen, count=100)
    calibrated_error = np.mean([e.accuracy - realised for e, realised in results])
    # the map is only as good as its holdout: its error is at most 0.5 / sqrt(rows) a standard error
    assert abs(calibrated_error) < 4 * 0.5 / np.sqrt(holdout), "within the holdout's own error"
    assert abs(calibrated_error) <= abs(np.mean([e.accuracy - r for e, r in raw])) + 0.005, (
        "calibrating helps"
    )


def test_the_estimate_follows_a_covariate_shift_to_where_the_model_is_unsure():
    rng = np.random.default_rng(7)
    before = windows(rng, 0.4, 0.4, count=20)  # scores near 0 and 1: a sure model
    after = windows(rng, 4.0, 4.0, count=20)  # the inputs moved: scores near 0.5
    assert np.mean([e.accuracy for e, _ in before]) > np.mean([e.accuracy for e, _ in after]) + 0.15
    assert (
        all(e.covers(realised) for e, realised in after[:5])
        or np.mean([e.covers(r) for e, r in after]) >= 0.85
    )


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.5, 1.0), st.booleans()), min_size=1, max_size=300),
    st.integers(1, 30),
)
def test_a_calibration_is_monotone_and_survives_its_dict(rows, bins):
    confidence = np.array([c for c, _ in rows])
    correct = np.array([k for _, k in rows])
    calibration = Calibration.fit(confidence, correct, bins)
    assert list(calibration.accuracy) == sorted(calibration.accuracy)
    assert all(x < y for x, y in zip(calibration.edges, calibration.edges[1:], strict=False))
    assert len(calibration.accuracy) == len(calibration.edges) + 1 <= bins and calibration.rows == len(rows)
    assert Calibration.from_dict(calibration.as_dict()) == calibration
    assert np.all((calibration(confidence) >= 0) & (calibration(confidence) <= 1))


def test_no_predictions_no_estimate():
    assert estimate_accuracy(np.array([])) is None
