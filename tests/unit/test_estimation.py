"""Confidence-based performance estimation (`driftloop.estimation`) on synthetic classifiers whose
truth is known: the estimate is unbiased when the scores are calibrated (or a version's holdout
calibrates them), its band covers the realised accuracy at the stated rate, and it follows a
covariate shift that moves inputs to where the model is unsure."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftloop.estimation import Calibration, RollingEstimate, estimate_accuracy


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
    bound = 0.95 - 4 * np.sqrt(0.95 * 0.05 / len(results))  # 4 standard errors of 300 windows: 0.90
    assert covered >= bound, f"a 95% band covered {covered:.1%} of the windows"


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


@settings(max_examples=25, deadline=None)
@given(
    batches=st.lists(st.lists(st.floats(0.5, 1.0), min_size=1, max_size=80), min_size=1, max_size=10),
    window=st.integers(1, 120),
)
def test_a_rolling_estimate_is_the_estimate_of_the_newest_window_however_it_was_fed(batches, window):
    calibration = Calibration.fit(np.linspace(0.5, 1, 40), np.arange(40) % 3 > 0, bins=4)
    rolling = RollingEstimate(calibration, window)
    for batch in batches:
        rolling.add(np.array(batch))
    newest = np.concatenate([np.array(b) for b in batches])[-window:]
    expected, got = estimate_accuracy(newest, calibration), rolling.estimate()
    assert got is not None and expected is not None and got.rows == expected.rows
    assert np.allclose([got.accuracy, got.low, got.high], [expected.accuracy, expected.low, expected.high])
    assert rolling.seen == sum(map(len, batches)) and rolling.full == (rolling.seen >= window)


def _monitor(floor=0.6):
    """A monitor of `sea` (floor `floor`) whose champion v1 is calibrated: served probabilities
    below 0.75 are right 55% of the time, above it 95%."""
    from driftloop.contracts import CalibrationTable, ModelPromoted
    from driftloop.settings import Topics
    from driftloop.spec import load_specs
    from driftloop_monitor.adapters import InMemoryJoinStore
    from driftloop_monitor.handlers import Monitor
    from tests.conftest import ROOT

    spec = load_specs(ROOT / "models")["sea"]
    spec = spec.model_copy(update={"gate": spec.gate.model_copy(update={"floor": floor})})
    monitor = Monitor({"sea": spec}, joins=InMemoryJoinStore(), topics=Topics(), quality_window=100)
    table = CalibrationTable(edges=[0.75], accuracy=[0.55, 0.95], rows=1_000)
    artifact = {"uri": "mem://a", "sha256": "0" * 64, "size_bytes": 1}
    promoted = ModelPromoted(
        model="sea", version=1, reason="bootstrap", artifact=artifact, classes=[0, 1],
        feature_names=["x0", "x1", "x2"], calibration=table,
    )  # fmt: skip
    return monitor, promoted


def _results(n, top, start=0, version=1):
    from driftloop.contracts import PredictionResult

    return [
        PredictionResult(
            request_id=f"r{start + i}",
            model="sea",
            model_version=version,
            prediction=1,
            probabilities={"0": round(1 - top, 6), "1": top},
        )
        for i in range(n)
    ]


async def test_the_monitor_estimates_each_version_and_says_once_when_the_champion_falls_below_the_floor():
    from driftloop.metrics import Tally
    from driftloop_monitor.handlers import ESTIMATED

    monitor, promoted = _monitor(floor=0.6)
    await monitor.on_lifecycle(promoted)
    window = monitor.watches["sea"].spec.drift.estimate.window

    def feed(n, top, start):
        return [event for _, event in monitor._prediction_shifts(_results(n, top, start), Tally())]

    assert [e for e in feed(window, 0.9, 0) if e.kind == "estimate"] == []
    assert ESTIMATED.labels("sea", "1")._value.get() == 0.95  # through the calibration, not 0.9
    # inputs move to where the model is unsure: 55% right there, below the 0.6 floor once the window is
    # mostly such answers
    fell = [
        e for start in range(window, 3 * window, 50) for e in feed(50, 0.6, start) if e.kind == "estimate"
    ]
    assert len(fell) == 1, "one event per fall"
    (event,) = fell
    assert event.detector == "cbpe" and event.estimate is not None and event.estimate.accuracy < 0.6
    assert event.statistic == event.estimate.accuracy < event.estimate.high
    assert ESTIMATED.labels("sea", "1")._value.get() < 0.6
    # back above the floor, then down again: a second event
    assert not [e for e in feed(window, 0.9, 3 * window) if e.kind == "estimate"]
    assert len([e for e in feed(window, 0.6, 4 * window) if e.kind == "estimate"]) == 1


async def test_labels_reconcile_the_estimate_with_the_realised_accuracy():
    import orjson

    from driftloop.contracts import result_json
    from driftloop.metrics import Tally
    from driftloop_monitor.handlers import ESTIMATE_ERROR

    monitor, promoted = _monitor()
    await monitor.on_lifecycle(promoted)
    for i in range(100):  # served at 0.9 (95% right by the calibration), and 80 of 100 right
        request = {"request_id": f"r{i}", "model": "sea", "features": {"x0": 1, "x1": 1, "x2": 1}, "ts": i}
        fields = {
            "result": orjson.dumps(
                result_json(f"r{i}", "sea", 1, prediction=1, probabilities={"0": 0.1, "1": 0.9})
            ),
            "feedback": orjson.dumps({"label": int(i % 5 != 0), "ts": i + 1}),
        }
        monitor._learn(f"r{i}", fields, request, Tally())
    monitor._export_quality()
    assert abs(ESTIMATE_ERROR.labels("sea", "1")._value.get() - (0.95 - 0.8)) < 1e-9


def test_the_estimate_floor_defaults_to_the_accuracy_gate_floor():
    monitor, _ = _monitor(floor=0.7)
    spec = monitor.watches["sea"].spec
    assert spec.estimate_floor == 0.7
    balanced = spec.model_copy(update={"gate": spec.gate.model_copy(update={"metric": "balanced_accuracy"})})
    assert balanced.estimate_floor is None
    own = balanced.model_copy(
        update={
            "drift": spec.drift.model_copy(
                update={"estimate": spec.drift.estimate.model_copy(update={"floor": 0.8})}
            )
        }
    )
    assert own.estimate_floor == 0.8


async def test_a_version_is_also_held_to_its_own_holdout_accuracy_less_the_allowed_drop():
    from driftloop.contracts import CalibrationTable
    from driftloop.metrics import Tally
    from driftloop_monitor.handlers import ESTIMATE_FLOOR

    monitor, promoted = _monitor(floor=0.3)  # a gate floor far below anything served
    table = CalibrationTable(edges=[0.75], accuracy=[0.7, 0.95], rows=1_000, overall=0.92)
    await monitor.on_lifecycle(promoted.model_copy(update={"calibration": table}))
    watch = monitor.watches["sea"]
    assert watch.estimate_floor(1) == pytest.approx(0.92 - watch.spec.drift.estimate.max_drop)
    sends = monitor._prediction_shifts(_results(watch.spec.drift.estimate.window, 0.6), Tally())
    assert [event.kind for _, event in sends if event.kind == "estimate"] == ["estimate"]
    assert ESTIMATE_FLOOR.labels("sea", "1")._value.get() == pytest.approx(0.87)
    # without the drop, the floor alone: 0.7 is far above 0.3
    spec = watch.spec
    loose = spec.model_copy(
        update={
            "drift": spec.drift.model_copy(
                update={"estimate": spec.drift.estimate.model_copy(update={"max_drop": None})}
            )
        }
    )
    assert type(watch)(loose, 100, {1: watch.calibrations[1]}).estimate_floor(1) == 0.3
