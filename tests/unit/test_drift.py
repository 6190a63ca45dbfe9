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
