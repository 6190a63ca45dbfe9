"""The backtest: a history replayed through the policy, fitting and gate the services use."""

import itertools
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import yaml

from driftloop import datasets
from driftloop.backtest import (
    Backtest,
    Delay,
    History,
    Result,
    policy_changes,
    recommend,
    spec_sections,
    variant,
)
from driftloop.backtesting import encode, load, parse_delay
from driftloop.cli import main
from driftloop.estimation import Calibration

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _sea(n_before, n_after, seed=1):
    rows = itertools.chain(
        itertools.islice(datasets.sea(0, seed), n_before),
        itertools.islice(datasets.sea(3, seed + 1), n_after),
    )
    return [(x, y, T0 + timedelta(seconds=i)) for i, (x, y) in enumerate(rows)]


@pytest.fixture(scope="module")
def abrupt(request):
    from pathlib import Path

    from driftloop.spec import read_specs

    spec = read_specs(Path("models")).specs["sea"]
    history, left_out = encode(spec, _sea(6000, 6000), drifts=(6000,))
    assert left_out == 0
    return spec, history


def test_labels_arrive_after_their_row_was_served():
    history = History(np.zeros((5, 1)), [0] * 5, [T0 + timedelta(hours=i) for i in range(5)])
    assert Delay(rows=0).due(history).tolist() == [1, 2, 3, 4, 5]
    assert Delay(rows=2).due(history).tolist() == [3, 4, 5, 5, 5]
    assert Delay(seconds=2 * 3600).due(history).tolist() == [2, 3, 4, 5, 5]
    assert Delay(seconds=1).due(history).tolist() == [1, 2, 3, 4, 5]  # never before the row itself
    assert parse_delay("48") == Delay(rows=48) and parse_delay("12h") == Delay(seconds=43_200.0)
    with pytest.raises(ValueError, match="not a delay"):
        parse_delay("soon")


def test_a_drift_policy_detects_retrains_on_post_change_rows_and_beats_never(abrupt):
    spec, history = abrupt
    drift = variant(spec, retrain={"trigger": "drift", "window": "since_change", "min_rows": 1000})
    never = variant(spec, retrain={"trigger": "none"})
    result = Backtest(drift, history, Delay(rows=10), initial=3000).run()
    baseline = Backtest(never, history, Delay(rows=10), initial=3000).run()
    figures = result.drift_figures(history.drifts)
    (delay,) = figures["detection_delays"]
    assert delay is not None and 0 < delay < 1500
    (training,) = [t for t in result.trainings if t.reason == "drift"]
    # it waited for 1,000 labelled rows after the estimated change point, and read only those
    assert training.blessed and training.rows == 1000 and training.row > result.detections[0].row
    assert result.accuracy > baseline.accuracy + 0.02
    assert figures["stale_rows"] < baseline.drift_figures(history.drifts)["stale_rows"]
    assert result.replay_cpu_s >= 0 and result.train_cpu_s > 0


def test_the_training_window_reads_what_the_store_would(abrupt):
    spec, history = abrupt
    backtest = Backtest(spec, history)
    labelled = np.arange(0, 5000)  # rows whose label has arrived
    rows = backtest._window(labelled, T0 + timedelta(seconds=1000), T0 + timedelta(seconds=4000), 500)
    assert rows.tolist() == list(range(3500, 4000))  # [since, until), the newest last_n
    assert backtest._window(labelled, None, T0 + timedelta(days=1), 10_000).tolist() == list(range(5000))


def test_a_replay_is_deterministic(abrupt):
    spec, history = abrupt
    periodic = variant(spec, retrain={"trigger": "periodic", "every_rows": 2000, "window": "last"})
    first, second = (Backtest(periodic, history, Delay(rows=5), initial=3000).run() for _ in range(2))
    assert first.accuracy == second.accuracy
    assert [(t.row, t.rows, t.blessed) for t in first.trainings] == [
        (t.row, t.rows, t.blessed) for t in second.trainings
    ]
    assert [t.row for t in first.trainings] == [5005, 7005, 9005, 11005]  # every 2,000 labels


def _result(name, accuracy, retrains):
    correct = np.arange(100) < round(accuracy * 100)
    result = Result(name, None, 0, correct, np.zeros(100), np.zeros(100), np.zeros(100))
    result.trainings = [None] * retrains
    return result


def test_the_recommendation_trains_least_among_the_best_and_keeps_the_budget():
    results = [
        _result("a", 0.80, 30),
        _result("b", 0.80, 10),
        _result("c", 0.78, 2),
        _result("never", 0.7, 0),
    ]
    assert recommend(results).name == "b"
    assert recommend(results, max_retrains=5).name == "c"


def test_recommended_policy_is_printed_as_the_changes_to_the_spec(sea_spec):
    wide = variant(sea_spec, retrain={"trigger": "periodic", "window_rows": 4000}, gate={"confidence": None})
    assert policy_changes(wide, sea_spec) == {
        "retrain": {"trigger": "periodic", "window_rows": 4000},
        "gate": {"confidence": None},
    }
    assert yaml.safe_load(spec_sections(wide, sea_spec)) == policy_changes(wide, sea_spec)
    assert policy_changes(sea_spec, sea_spec) == {}


def test_backtest_command_on_a_csv_file(tmp_path, capsys):
    rows = _sea(2500, 2500)
    path = tmp_path / "history.csv"
    lines = ["event_time,x0,x1,x2,y"] + [
        f"{at.isoformat()},{x['x0']},{x['x1']},{x['x2']},{y}"
        for x, y, at in reversed(rows)  # any order
    ]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code = main(["backtest", str(path), "--model", "sea", "--label-delay", "1m", "--initial", "1500",
                 "--policies", "spec,never", "--out", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "labels 0:01:00 late" in printed
    report = json.loads((out / "backtest.json").read_text())
    # the spec's own policy (retrain on the detected drift) wins: nothing to change in the spec
    assert report["recommended"] == "spec" and report["recommended_changes"] == {}
    assert "recommended: spec" in printed and "nothing to change" in printed
    assert {p["name"] for p in report["policies"]} == {"spec", "never"}
    assert report["rows"] == 5000 and report["initial_rows"] == 1500
    assert (out / "backtest.png").stat().st_size > 10_000


def test_backtest_refuses_what_it_cannot_replay(tmp_path, sea_spec):
    path = tmp_path / "short.csv"
    path.write_text("x0,x1,x2,y\n1,2,3,0\n")
    from driftloop.datasets import DataError

    with pytest.raises(DataError, match="usable rows"):
        load(str(path), sea_spec)
    assert main(["backtest", str(path), "--model", "sea", "--policies", "nope"]) == 2


def test_a_history_loads_from_a_stream_a_parquet_file_and_the_offline_store(tmp_path, sea_spec):
    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq

    from driftloop.store import RowStore

    named = load("sea_abrupt", sea_spec, n=2000)
    assert len(named.history) == 2000 and named.history.drifts == (1000,)

    rows = _sea(1500, 0)
    table = pa.table({
        "x0": [x["x0"] for x, _, _ in rows], "x1": [x["x1"] for x, _, _ in rows],
        "x2": [x["x2"] for x, _, _ in rows], "y": [y for _, y, _ in rows],
        "event_time": [at for _, _, at in rows],
    })  # fmt: skip
    pq.write_table(table, tmp_path / "history.parquet")
    parquet = load(str(tmp_path / "history.parquet"), sea_spec)
    assert len(parquet.history) == 1500 and list(parquet.history.times) == [at for _, _, at in rows]

    store = RowStore(tmp_path / "offline")
    bodies = [
        (f"e{i}", at, orjson.dumps({"features": x, "label": y, "event_time": at.isoformat(), "model": "sea"}))
        for i, (x, y, at) in enumerate(rows)
    ]
    store.append("sea", bodies)
    since = T0 + timedelta(seconds=200)
    stored = load(str(tmp_path / "offline"), sea_spec, since=since)
    assert len(stored.history) == 1300 and stored.history.times[0] == since


def _served(chance, correct, versions, overall):
    n = len(correct)
    result = Result("r", None, 0, np.array(correct, dtype=bool), np.zeros(n), np.array(versions), np.zeros(n))
    result.chance = np.array(chance, dtype=np.float64)
    result.calibrations = {v: Calibration((), (overall,), 1000, overall=overall) for v in set(versions)}
    return result


def test_the_estimate_figures_set_each_alarm_beside_what_the_labels_showed():
    rng = np.random.default_rng(3)
    steady = rng.random(2_000) < 0.9
    # a concept drift: the labels fall to 60% while the model stays as sure as before
    concept = _served([0.9] * 4_000, [*steady, *(rng.random(2_000) < 0.6)], [1] * 4_000, 0.9)
    figures = concept.estimate_figures(window=200, max_drop=0.05, floor=None)
    assert figures["rows"] == 4_000 - 199 and figures["alarms"] == 0
    assert figures["falls"] >= 1 and figures["caught"] == 0
    assert 0.1 < figures["mean_abs_error"] < 0.2 and figures["bias"] > 0  # estimated too high after
    # inputs move to where the model is unsure: the estimate falls with the labels
    unsure = _served([0.9] * 2_000 + [0.6] * 2_000, concept.correct, [1] * 4_000, 0.9)
    figures = unsure.estimate_figures(window=200, max_drop=0.05, floor=None)
    assert figures["alarms"] == 1 and figures["confirmed"] == 1 and figures["caught"] >= 1
    assert figures["mean_abs_error"] < 0.06
    # a new version starts its windows afresh: windows across the swap are not judged
    swapped = _served([0.9] * 4_000, concept.correct, [1] * 2_000 + [2] * 2_000, 0.9)
    assert swapped.estimate_figures(window=200, max_drop=0.05, floor=None)["rows"] == 4_000 - 2 * 199
    # nothing to hold the estimate to: no alarms, the error still measured
    free = unsure.estimate_figures(window=200, max_drop=None, floor=None)
    assert free["alarms"] == free["falls"] == 0 and free["mean_abs_error"] is not None
