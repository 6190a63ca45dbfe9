"""The retraining policy: what a labelled stream makes it ask for, in rows and event time only."""

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest

from driftloop.policy import RetrainPolicy
from driftloop.spec import ModelSpec

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _spec(**sections):
    doc = {
        "name": "m",
        "features": [{"name": "x", "type": "numeric"}],
        "label": {"name": "y", "classes": [0, 1]},
        "algorithm": {"name": "logistic_regression"},
        "drift": {"warmup_samples": 100, "cooldown_rows": 1000},
    }
    for section, fields in sections.items():
        doc[section] = {**doc.get(section, {}), **fields}
    return ModelSpec.model_validate(doc)


def _feed(policy, errors, version=1, start=0, step_s=1.0, promote=False):
    """Feed 0/1 errors as labelled outcomes; (row, retrain) for every retrain asked for. `promote`:
    each candidate is promoted at once (as the backtest does with no deployment lag) and serves
    the next rows; else nothing answers the requests."""
    asked = []
    for i, error in enumerate(errors, start):
        step = policy.observe(version, not error, T0 + timedelta(seconds=i * step_s))
        asked += [(i, r) for r in step.retrains]
        for retrain in step.retrains if promote else ():
            version += 1
            policy.promoted(version, retrain.command_id)
    return asked


def _errors(rates_and_lengths, seed=1):
    rng = random.Random(seed)
    return [int(rng.random() < rate) for rate, n in rates_and_lengths for _ in range(n)]


def test_a_drift_retrain_waits_for_rows_after_the_change_and_reads_only_them():
    policy = RetrainPolicy(_spec(retrain={"trigger": "drift", "min_rows": 800, "window_rows": 5000}))
    policy.promoted(1)
    asked = _feed(policy, _errors([(0.1, 5000), (0.4, 3000)]))
    ((row, retrain),) = asked
    assert retrain.reason == "drift"
    change = retrain.since
    assert change is not None and abs((change - T0).total_seconds() - 5000) < 300  # the change point
    change_row = int((change - T0).total_seconds())
    assert change_row + 799 <= row < 5000 + 800 + 600  # detected, then 800 post-change rows arrived
    assert retrain.rows >= 800 and retrain.last_n == 5000
    assert retrain.until == T0 + timedelta(seconds=row, microseconds=1)  # rows up to the newest label


def test_periodic_retrains_count_labelled_rows_of_every_version_not_seconds():
    spec = _spec(retrain={"trigger": "periodic", "every_rows": 1000, "window": "last"})
    fast, slow = RetrainPolicy(spec), RetrainPolicy(spec)
    fast.promoted(1)
    slow.promoted(1)
    errors = _errors([(0.1, 3500)])
    at_fast = [row for row, _ in _feed(fast, errors, step_s=0.001, promote=True)]
    at_slow = [row for row, _ in _feed(slow, errors, step_s=3600.0, promote=True)]  # another speed
    assert at_fast == at_slow == [999, 1999, 2999]
    other_version = RetrainPolicy(spec)
    other_version.promoted(2)
    assert [row for row, _ in _feed(other_version, errors, version=1, promote=True)] == [999, 1999, 2999]


def test_periodic_by_event_time():
    policy = RetrainPolicy(_spec(retrain={"trigger": "periodic", "every_rows": None, "every_s": 86_400.0}))
    policy.promoted(1)
    rows = [row for row, _ in _feed(policy, [0] * 100, step_s=3_600.0, promote=True)]  # one row an hour
    assert rows == [24, 48, 72, 96]


def test_after_a_drift_retrain_periodic_retrains_do_not_read_rows_before_the_change():
    spec = _spec(retrain={"trigger": "both", "every_rows": 2000, "min_rows": 500})
    policy = RetrainPolicy(spec)
    policy.promoted(1)
    asked = _feed(policy, _errors([(0.1, 4000), (0.45, 4000)]), promote=True)
    reasons = [r.reason for _, r in asked]
    assert "drift" in reasons
    drift_at = reasons.index("drift")
    change = asked[drift_at][1].since
    later = [r for _, r in asked[drift_at + 1 :]]
    assert later and all(r.reason == "periodic" and r.since == change for r in later)
    assert all(r.since is None for _, r in asked[:drift_at])  # before it, the newest W rows


def test_a_rejected_retrain_is_retried_once_with_twice_the_rows():
    policy = RetrainPolicy(_spec(retrain={"trigger": "periodic", "every_rows": 3000, "window_rows": 2000}))
    policy.promoted(1)
    ((_, first),) = _feed(policy, [0] * 3000)
    policy.rejected(first.command_id)
    asked = _feed(policy, [0] * 1200, start=3000)
    ((retry_row, retry),) = asked
    assert retry.reason == "retry" and retry.last_n == 4000
    assert retry_row == 3000 + 1000 - 1  # after half as many new rows again (at least cooldown_rows)
    policy.rejected(retry.command_id)  # a retry is not retried: the periodic schedule goes on
    assert [(row, r.reason) for row, r in _feed(policy, [0] * 3000, start=4200)] == [(6999, "periodic")]


def test_a_champion_below_the_floor_is_retrained_without_a_detection():
    spec = _spec(retrain={"trigger": "drift", "below_floor_rows": 500}, gate={"floor": 0.7})
    policy = RetrainPolicy(spec)
    policy.promoted(1)
    asked = _feed(policy, _errors([(0.5, 1600)]), promote=True)  # bad from the start, and after
    rows = [row for row, r in asked if r.reason == "below_floor"]
    assert len(rows) >= 2 and rows[0] >= 499 and all(b - a >= 500 for a, b in itertools.pairwise(rows))


def test_no_routine_retrain_is_asked_while_one_is_unanswered_but_a_drift_one_is():
    # a slow trainer must not get a queue of retrains of nearly the same rows; a change is news
    spec = _spec(
        retrain={"trigger": "both", "every_rows": 500, "min_rows": 500, "below_floor_rows": 500},
        gate={"floor": 0.7},
        training={"window_rows": 8000},
    )
    policy = RetrainPolicy(spec)
    policy.promoted(1)
    asked = _feed(policy, _errors([(0.05, 3000), (0.6, 3000)]))  # nothing answers
    assert [r.reason for _, r in asked] == ["periodic", "drift"]
    first, drift = asked[0][1], asked[1][1]
    policy.rejected(drift.command_id)  # the drift candidate failed: a retry, then routine ones again
    later = _feed(policy, _errors([(0.6, 4000)]), start=6000, promote=True)
    assert "retry" in [r.reason for _, r in later] and len(later) > 2
    stale = RetrainPolicy(spec)  # an answer that never comes is not waited for past a window
    stale.promoted(1)
    quiet = _feed(stale, [0] * 9000)
    assert [row for row, _ in quiet] == [499, 499 + 8000] and first.command_id == quiet[0][1].command_id


def test_trigger_none_never_retrains_not_even_below_the_floor_or_after_a_change():
    spec = _spec(retrain={"trigger": "none", "below_floor_rows": 500}, gate={"floor": 0.7})
    policy = RetrainPolicy(spec)
    policy.promoted(1)
    assert _feed(policy, _errors([(0.1, 3000), (0.6, 3000)])) == []


def test_command_ids_are_stable_for_the_same_stream():
    spec = _spec(retrain={"trigger": "periodic", "every_rows": 500})
    ids = []
    for _ in range(2):
        policy = RetrainPolicy(spec)
        policy.promoted(1)
        ids.append([r.command_id for _, r in _feed(policy, [0] * 1500, promote=True)])
    assert ids[0] == ids[1] and len(set(ids[0])) == 3


@pytest.mark.parametrize(
    ("section", "field", "hint"),
    [
        ("training", "cooldown_s", "labelled rows"),
        ("drift", "cooldown_s", "drift.cooldown_rows"),
        ("drift", "retrain_min_rows", "retrain.min_rows"),
        ("drift", "refresh_after_samples", "periodic"),
    ],
)
def test_moved_settings_are_refused_with_where_they_went(section, field, hint):
    with pytest.raises(ValueError, match=hint):
        _spec(**{section: {field: 30}})


def test_a_periodic_trigger_needs_a_period():
    with pytest.raises(ValueError, match="every_rows or every_s"):
        _spec(retrain={"trigger": "periodic", "every_rows": None})


def test_routine_refreshes_keep_watching_and_other_champions_start_afresh():
    spec = _spec(retrain={"trigger": "both", "every_rows": 500, "below_floor_rows": 800}, gate={"floor": 0.7})
    policy = RetrainPolicy(spec)
    policy.promoted(1)
    version, reasons = 1, []
    for i, error in enumerate(_errors([(0.45, 2000)])):  # below the floor from the start
        step = policy.observe(version, not error, T0 + timedelta(seconds=i))
        for retrain in step.retrains:
            reasons.append(retrain.reason)
            version += 1
            policy.promoted(version, retrain.command_id)  # every periodic candidate is promoted
    assert reasons.count("periodic") >= 3
    assert policy.detector_samples > 1500  # one detector across the routine refreshes
    policy.promoted(version + 1, "a person's command")
    assert policy.detector_samples == 0 and len(policy.champion_outcomes) == 0


def test_below_the_floor_after_a_detection_waits_for_the_drift_retrain():
    # an abrupt drift takes the champion below the floor: the retrain is the drift one, on rows
    # after the change, not a below-floor one on the newest W rows (mostly the old concept)
    spec = _spec(retrain={"trigger": "drift", "min_rows": 1000, "below_floor_rows": 500}, gate={"floor": 0.7})
    policy = RetrainPolicy(spec)
    policy.promoted(1)
    asked = _feed(policy, _errors([(0.05, 4000), (0.8, 2000)]))
    assert [r.reason for _, r in asked][:1] == ["drift"]
    assert asked[0][1].since is not None


def test_the_rows_a_retrain_asks_for_are_counted_by_event_time_as_the_trainer_counts_them():
    # labels join out of event-time order (partitions, late feedback): a count in arrival order
    # after the change point is not the count of rows with event time after it, and a trainer
    # waiting for rows it can never have would hold up every retrain behind it
    spec = _spec(retrain={"trigger": "drift", "min_rows": 800, "window_rows": 5000, "below_floor_rows": None})
    policy = RetrainPolicy(spec)
    policy.promoted(1)
    rng = random.Random(3)
    errors = _errors([(0.1, 5000), (0.45, 3000)])
    times = [T0 + timedelta(seconds=i + rng.uniform(-40, 40)) for i in range(len(errors))]
    asked = []
    for i, (error, t) in enumerate(zip(errors, times, strict=True)):
        asked += [(i, r) for r in policy.observe(1, not error, t).retrains]
    ((row, retrain),) = asked
    in_window = sum(1 for t in times[: row + 1] if retrain.since <= t < retrain.until)
    assert retrain.rows == in_window >= 800
