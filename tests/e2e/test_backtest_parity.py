"""The backtest decides as the live loop does: one synthetic stream with a known abrupt drift,
played through the whole local stack (broker, redis-server and the six services) and replayed by
`driftloop backtest`'s engine, gives the same detection, the same retrain window and the same
promotions, within one feedback batch."""

import bisect
from datetime import UTC, datetime, timedelta

import pytest

from driftloop import backtesting, live, localstack, streams
from driftloop.backtest import Backtest, Delay
from driftloop.contracts import TrainModel
from driftloop.settings import Topics
from driftloop.spec import read_specs
from tests.conftest import ROOT
from tests.helpers import collect

ROWS, DRIFT_AT, INITIAL, DELAY_ROWS, RATE = 9_000, 4_500, 2_000, 10, 500.0
TOLERANCE = 50  # rows: one monitor batch of labels at this rate, and a few ONNX-vs-sklearn flips


@pytest.fixture
def stack(tmp_path):
    running = localstack.up(tmp_path / "run", ROOT / "models")
    yield running
    localstack.down(tmp_path / "run")


@pytest.mark.slow
async def test_live_loop_and_backtest_decide_alike(stack):
    spec = read_specs(ROOT / "models").specs["sea"]  # retrains on detections, since the change point
    stream = streams.stream("sea_abrupt", n=ROWS)
    assert stream.drifts == (DRIFT_AT,)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    rows = live.shifted([(x, y, epoch + timedelta(seconds=t)) for x, y, t in stream.rows], datetime.now(UTC))
    times = [t for _, _, t in rows]

    run = await live.play(stack.bootstrap, "sea", rows, INITIAL, DELAY_ROWS, RATE, timeout_s=180, shift=False)
    drift_promoted = [command_id for _, command_id in run.promotions if command_id.startswith("drift-")]
    asked = await collect(stack.bootstrap, Topics().training_requests, TrainModel, count=10, timeout=10,
                          until=lambda c: c.command_id in drift_promoted)  # fmt: skip
    drift_commands = [c for c in asked if c.model == "sea" and c.reason == "drift"]

    history, _ = backtesting.encode(spec, rows, stream.drifts)
    replayed = Backtest(spec, history, Delay(rows=DELAY_ROWS), INITIAL).run()

    # the same detection: the detector fired on the same labelled outcome, the same change point
    (live_drift,) = run.drifts
    (detection,) = replayed.detected
    assert abs(live_drift.samples_seen - detection.samples_seen) <= TOLERANCE
    live_change = bisect.bisect_left(times, live_drift.change_point_time)
    replayed_change = bisect.bisect_left(times, detection.change_point_time)
    assert abs(live_change - replayed_change) <= TOLERANCE
    assert abs(replayed_change - DRIFT_AT) < 500

    # the same retrain: rows since the change point, the same count and cap
    assert len(drift_commands) == 1, (asked, run.promotions)
    (command,) = drift_commands
    (request,) = replayed.requests
    assert command.since is not None and request.since is not None
    assert (
        abs(bisect.bisect_left(times, command.since) - bisect.bisect_left(times, request.since)) <= TOLERANCE
    )
    assert command.last_n == request.last_n
    assert abs((command.min_rows or 0) - request.rows) <= TOLERANCE
    assert (
        abs(bisect.bisect_left(times, command.until) - bisect.bisect_left(times, request.until)) <= TOLERANCE
    )

    # the same promotions: the bootstrap model, then the drift retrain's candidate
    assert [t.blessed for t in replayed.trainings] == [True]
    assert [command_id.split("-")[0] for _, command_id in run.promotions][1:] == ["drift"]
    assert abs(100 * (run.accuracy - replayed.accuracy)) < 1.5
