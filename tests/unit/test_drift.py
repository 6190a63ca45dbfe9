import random
from datetime import UTC, datetime, timedelta

from driftloop.spec import DriftSpec
from driftloop_monitor.domain import ConceptDriftMonitor, RollingQuality, estimate_change_point

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _errors(rates_and_lengths, seed=3):
    rng = random.Random(seed)
    return [int(rng.random() < rate) for rate, n in rates_and_lengths for _ in range(n)]


def _run(errors, spec, clock_step=0.001):
    monitor = ConceptDriftMonitor(spec)
    detections = []
    for i, error in enumerate(errors):
        d = monitor.update(error, T0 + timedelta(seconds=i), clock=i * clock_step)
        if d is not None:
            detections.append((i, d))
    return detections


def test_change_point_estimate_finds_a_shift_in_mean():
    errors = _errors([(0.1, 3000), (0.3, 600)])
    assert abs(estimate_change_point(errors) - 3000) < 150


def test_abrupt_drift_is_detected_after_onset_with_a_change_point_estimate():
    spec = DriftSpec(warmup_samples=200, cooldown_s=30)
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
    spec = DriftSpec(warmup_samples=0, cooldown_s=1e9)
    assert len(_run(errors, spec)) == 1  # the second change falls inside the cooldown
    late = DriftSpec(warmup_samples=9000)
    assert _run(errors, late) == []


def test_rolling_quality():
    quality = RollingQuality(window=4)
    for correct in [True, True, False, False, False]:
        quality.update(correct, 0.5)
    assert quality.accuracy == 0.25
    assert round(quality.log_loss, 4) == 0.6931


def _uniform_stats():
    from driftloop.contracts import FeatureStats

    deciles = [float(q) for q in range(1, 10)]
    return FeatureStats(mean=5.0, std=2.89, min=0.0, max=10.0, quantiles=deciles)


def test_psi_is_near_zero_for_the_reference_and_large_for_a_shift():
    import numpy as np

    from driftloop_monitor.domain import psi

    rng = np.random.default_rng(1)
    deciles = _uniform_stats().quantiles
    assert psi(deciles, rng.uniform(0, 10, 5000)) < 0.02
    assert psi(deciles, rng.uniform(5, 10, 5000)) > 0.5
    assert psi([0.0] * 9, rng.uniform(0, 1, 100)) is None  # a binary column has no ten bins


def test_covariate_monitor_is_silent_on_stationary_inputs_and_flags_a_shift_once():
    import numpy as np

    from driftloop_monitor.domain import CovariateMonitor

    rng = np.random.default_rng(2)
    monitor = CovariateMonitor(["a", "b", "c=red"], {"a": _uniform_stats(), "b": _uniform_stats()})
    quiet = [monitor.update(rng.uniform(0, 10, (250, 3))) for _ in range(200)]  # 50k samples
    assert not any(quiet), "a false covariate alarm on stationary inputs"

    def shifted(n):
        X = rng.uniform(0, 10, (n, 3))
        X[:, 1] = rng.uniform(6, 10, n)  # only b moves
        return X

    alarms = [shift for _ in range(12) for shift in monitor.update(shifted(250))]
    assert [a.feature for a in alarms] == ["b"], "flagged once, and only the feature that moved"
    assert alarms[0].statistic >= 0.25
    for _ in range(8):  # back to the reference: the flag clears, ready for the next shift
        monitor.update(rng.uniform(0, 10, (250, 3)))
    assert monitor.flagged == set()
    assert [a.feature for _ in range(12) for a in monitor.update(shifted(250))] == ["b"]
