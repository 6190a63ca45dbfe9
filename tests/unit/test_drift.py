import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from driftloop import fitting as training_domain
from driftloop.contracts import FeatureStats
from driftloop.policy import ConceptDriftMonitor, estimate_change_point
from driftloop.spec import DistributionDriftSpec, DriftSpec
from driftloop_monitor.domain import (
    CovariateMonitor,
    PredictionMonitor,
    Reference,
    RollingQuality,
    class_psi,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _errors(rates_and_lengths, seed=3):
    rng = random.Random(seed)
    return [int(rng.random() < rate) for rate, n in rates_and_lengths for _ in range(n)]


def _run(errors, spec):
    monitor = ConceptDriftMonitor(spec)
    detections = []
    for i, error in enumerate(errors):
        d = monitor.update(error, T0 + timedelta(seconds=i))
        if d is not None:
            detections.append((i, d))
    return detections


def test_change_point_estimate_finds_a_shift_in_mean():
    errors = _errors([(0.1, 3000), (0.3, 600)])
    assert abs(estimate_change_point(errors) - 3000) < 150


def test_abrupt_drift_is_detected_after_onset_with_a_change_point_estimate():
    spec = DriftSpec(warmup_samples=200, cooldown_rows=1000)
    detections = _run(_errors([(0.11, 5000), (0.2, 3000)]), spec)
    assert detections, "the drift was not detected"
    first_at, first = detections[0]
    assert 5000 < first_at < 6500
    assert abs(first.change_point_sample - 5000) < 400
    assert first.change_point_time == T0 + timedelta(seconds=first.change_point_sample)
    assert first.error_rate_after > first.error_rate_before


def test_stationary_stream_raises_no_alarm():
    assert _run(_errors([(0.11, 30_000)], seed=11), DriftSpec(warmup_samples=200)) == []


def test_warmup_ignores_the_first_samples_and_cooldown_spaces_detections():
    errors = _errors([(0.05, 3000), (0.5, 3000), (0.05, 3000)])
    spec = DriftSpec(warmup_samples=0, cooldown_rows=10_000)
    assert len(_run(errors, spec)) == 1  # the second change falls inside the cooldown
    assert len(_run(errors, DriftSpec(warmup_samples=0, cooldown_rows=1000))) == 2  # counted in rows
    late = DriftSpec(warmup_samples=9000)
    assert _run(errors, late) == []


def test_rolling_quality():
    quality = RollingQuality(window=4)
    for correct in [True, True, False, False, False]:
        quality.update(correct, 0.5)
    assert quality.accuracy == 0.25
    assert round(quality.log_loss, 4) == 0.6931


def _uniform_stats():
    deciles = [float(q) for q in range(1, 10)]
    return FeatureStats(mean=5.0, std=2.89, min=0.0, max=10.0, quantiles=deciles)


def test_distances_are_near_zero_for_the_reference_and_large_for_a_shift():
    rng = np.random.default_rng(1)
    reference = Reference(_uniform_stats())
    same = reference.distances(rng.uniform(0, 10, 5000))
    assert same["psi"] < 0.02 and same["ks"] < 0.04 and same["wasserstein"] < 0.05
    moved = reference.distances(rng.uniform(5, 10, 5000))
    assert moved["psi"] > 0.5 and moved["ks"] > 0.45 and moved["wasserstein"] > 0.7


def test_distances_work_on_discrete_columns_from_percentiles():
    rng = np.random.default_rng(4)
    column = (rng.random(20_000) < 0.3).astype(float)  # a one-hot column, 30% ones
    stats = training_domain.reference_stats(column[:, None], ["c=red"])["c=red"]
    reference = Reference(stats)
    same = reference.distances((rng.random(1000) < 0.3).astype(float))
    assert same["psi"] < 0.02 and same["ks"] < 0.05
    moved = reference.distances((rng.random(1000) < 0.6).astype(float))
    assert moved["psi"] > 0.25 and moved["ks"] > 0.25


def test_class_psi_counts_an_unseen_class():
    assert class_psi({"0": 0.5, "1": 0.5}, {"0": 480, "1": 520}) < 0.01
    assert class_psi({"0": 0.5, "1": 0.5}, {"0": 500, "2": 500}) > 1


@pytest.mark.parametrize("statistic", ["psi", "ks", "wasserstein"])
def test_covariate_monitor_is_silent_on_stationary_inputs_and_flags_a_shift_once(statistic):
    rng = np.random.default_rng(2)
    spec = DistributionDriftSpec(statistic=statistic)
    monitor = CovariateMonitor(["a", "b", "c=red"], {"a": _uniform_stats(), "b": _uniform_stats()}, spec)
    quiet = [monitor.update(rng.uniform(0, 10, (250, 3))) for _ in range(200)]  # 50k samples
    assert not any(quiet), "a false covariate alarm on stationary inputs"
    assert set(monitor.last["a"]) == {"psi", "ks", "wasserstein"}

    def shifted(n):
        X = rng.uniform(0, 10, (n, 3))
        X[:, 1] = rng.uniform(6, 10, n)  # only b moves
        return X

    alarms = [shift for _ in range(12) for shift in monitor.update(shifted(250))]
    assert [a.name for a in alarms] == ["b"], "flagged once, and only the feature that moved"
    assert alarms[0].statistic >= spec.limits[0]
    for _ in range(8):  # back to the reference: the flag clears, ready for the next shift
        monitor.update(rng.uniform(0, 10, (250, 3)))
    assert monitor.flagged == set()
    assert [a.name for _ in range(12) for a in monitor.update(shifted(250))] == ["b"]


def test_prediction_monitor_flags_a_changed_class_mix_and_not_noise():
    rng = np.random.default_rng(5)
    monitor = PredictionMonitor({"0": 0.64, "1": 0.36}, DistributionDriftSpec())
    quiet = [monitor.update(list(np.where(rng.random(250) < 0.36, "1", "0"))) for _ in range(200)]
    assert not any(quiet)
    alarms = [s for _ in range(10) for s in monitor.update(list(np.where(rng.random(250) < 0.8, "1", "0")))]
    assert [a.name for a in alarms] == ["prediction"]
    assert PredictionMonitor({}, DistributionDriftSpec()).update(["0"] * 5000) == []  # no reference


def test_spec_refuses_a_clear_level_above_the_threshold():
    with pytest.raises(ValueError, match="clear"):
        DistributionDriftSpec(statistic="ks", threshold=0.1, clear=0.2)


def test_a_gradual_rise_warns_before_it_is_called_drift():
    errors = _errors([(0.1, 5000), (0.14, 1500), (0.3, 3000)], seed=8)
    monitor = ConceptDriftMonitor(DriftSpec(warmup_samples=200, cooldown_rows=100_000))
    first_warning = first_drift = None
    for i, error in enumerate(errors):
        detection = monitor.update(error, T0)
        if monitor.warnings and first_warning is None:
            first_warning = i
        if detection is not None and first_drift is None:
            first_drift = i
            assert not monitor.in_warning  # drift supersedes the warning
    assert first_warning is not None and first_drift is not None
    assert 5000 < first_warning < first_drift


def test_an_improvement_is_not_called_drift_unless_asked():
    errors = _errors([(0.3, 5000), (0.05, 3000)], seed=9)
    assert _run(errors, DriftSpec(warmup_samples=200)) == []
    assert len(_run(errors, DriftSpec(warmup_samples=200, only_degradation=False))) == 1


@pytest.mark.parametrize("sizes", [[2000], [1000, 1000], [1800, 200], [7] * 286])
def test_distribution_flags_do_not_depend_on_how_samples_were_batched(sizes):
    rng = np.random.default_rng(6)
    stream = np.concatenate([rng.uniform(0, 10, (1500, 1)), rng.uniform(8, 10, (1500, 1))])
    monitor = CovariateMonitor(["a"], {"a": _uniform_stats()}, DistributionDriftSpec())
    seen, at = 0, []
    for size in [1500, *sizes, 3000]:  # the reference part, then the shift in batches of `sizes`
        for shift in monitor.update(stream[seen : seen + size]):
            at.append(shift.samples_seen)
        seen += size
    assert at == [2250]  # tests at every 250th sample: the same flag, at the same sample, every time


def test_a_labelled_entity_request_becomes_a_training_row_of_what_was_served():
    import orjson

    from driftloop.contracts import result_json
    from driftloop.metrics import Tally
    from driftloop.settings import Topics
    from driftloop.spec import load_specs
    from driftloop_monitor.adapters import InMemoryJoinStore
    from driftloop_monitor.handlers import Monitor
    from tests.conftest import ROOT

    specs = load_specs(ROOT / "models")
    monitor = Monitor(specs, joins=InMemoryJoinStore(), topics=Topics(), quality_window=100)
    served = {"x0": 9.0, "x1": 9.0, "x2": 1.0}  # the request named only its entity
    request = {"request_id": "r1", "model": "sea", "features": {}, "entity_id": "u1", "ts": 1_000}
    fields = {
        "result": orjson.dumps(
            result_json("r1", "sea", 1, prediction=1, probabilities={"0": 0.1, "1": 0.9}, features=served)
        ),
        "feedback": orjson.dumps({"label": 1, "ts": 2_000}),
    }
    ((topic, observation),) = monitor._learn("r1", fields, request, Tally())
    assert topic == "events.raw"
    assert observation.features == served and observation.entity_id == "u1" and observation.label == 1
