"""The whole loop through real processes: broker, redis-server, Prometheus and the six services of
the local stack; a short SEA scenario with an abrupt drift must be detected, retrained, gated,
promoted and recovered from."""

import asyncio
import bisect
import json
import random
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from driftloop import backtesting, demo, live, localstack, streams
from driftloop.backtest import Backtest, Delay
from driftloop.client import HttpPredictionClient, PredictionClient, make_producer, send_all
from driftloop.contracts import DeadLetter, DriftDetected, PredictionRequest, PredictionResult, TrainModel
from driftloop.settings import Topics
from driftloop.spec import read_specs
from tests.browser import check_console
from tests.conftest import ROOT, wait_for
from tests.helpers import by_request_id, collect, served_versions


@pytest.fixture
def stack(request, tmp_path):
    """The local stack; parametrized "s3", its artifacts on a local S3-protocol server."""
    running = localstack.up(tmp_path / "run", ROOT / "models", object_store=getattr(request, "param", "file"))
    yield running
    localstack.down(tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("stack", ["s3"], indirect=True)
async def test_the_loop_closes_on_an_abrupt_drift(stack, tmp_path):
    """On the stack as deployed apart: artifacts only through the S3 server."""
    scenario = demo.Scenario(
        history=3000,
        before=3000,
        max_after=15_000,
        recovery_window=1000,
        rate_per_s=800,
        timeout_s=240,
    )
    summary = await demo.run(stack.bootstrap, scenario, tmp_path / "out")

    assert summary["loop_closed"], summary
    assert summary["detection_delay_samples"] > 0, "detected before the drift happened"
    assert summary["false_alarms"] == 0, summary
    # SEA's inputs do not drift, and the frozen model's predicted-class mix does not either; nor
    # does the accuracy estimated from its probabilities (a concept drift is invisible to it)
    assert summary["distribution_alarms"] == {"covariate": 0, "prediction": 0, "estimate": 0}, summary
    versions = summary["versions"]
    assert versions["after_drift"] > versions["initial"]
    accuracy = summary["accuracy"]
    assert accuracy["after_drift_old_model"] < accuracy["before_drift"] - 0.03
    assert accuracy["after_recovery"] > accuracy["after_drift_old_model"]
    assert (tmp_path / "out" / "demo.png").stat().st_size > 10_000

    async with PredictionClient(stack.bootstrap, timeout_s=10) as client:
        result = await client.predict("sea", {"x0": 9.5, "x1": 9.5, "x2": 0.0})
    assert result.error is None and result.model_version == versions["after_drift"]
    # the same model over HTTP (the Open Inference Protocol), answered and logged to the topics
    async with HttpPredictionClient(stack.url("inference"), timeout_s=10) as http:
        over_http = await http.predict_many("sea", [{"x0": 9.5, "x1": 9.5, "x2": 0.0}, {"x0": 1.0}])
    assert over_http[0].model_version == versions["after_drift"] and over_http[0].error is None
    assert over_http[0].probabilities == pytest.approx(result.probabilities)
    assert over_http[1].error.startswith("missing_feature")
    logged = await by_request_id(stack.bootstrap, Topics().predictions_results, [over_http[0].request_id])
    assert [data["model_version"] for data, _ in logged[over_http[0].request_id]] == [versions["after_drift"]]

    producer = make_producer(stack.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(Topics().predictions_requests, b"\x00 not a request")
    finally:
        await producer.stop()
    dead = await collect(stack.bootstrap, Topics().events_dlq, DeadLetter, 2)
    # both consumers of the request topic reject it, each with its own record
    assert {(d.service, d.reason) for d in dead} == {
        ("inference", "malformed_json"),
        ("monitor", "malformed_json"),
    }

    cards = httpx.get(f"{stack.url('registry')}/v1/versions", params={"model": "sea"}).json()
    assert [c["status"] for c in cards][-1] == "champion"
    assert cards[-1]["reason"] == "drift"

    metrics = httpx.get(f"{stack.url('monitor')}/metrics").text
    assert 'driftloop_monitor_drift_detections_total{detector="adwin",kind="concept",model="sea"}' in metrics

    # no artifact went through a directory two services share: each serving host keeps its copies
    var = tmp_path / "run" / "var"
    assert not (var / "objects").exists()
    cached = {p.name for p in (var / "inference" / "artifact-cache").iterdir()}
    assert {c["sha256"] for c in cards if c["status"] == "champion"} <= cached
    # where each request's time went, per hop, one observation per request
    hops = {}
    for line in httpx.get(f"{stack.url('inference')}/metrics").text.splitlines():
        if line.startswith("driftloop_record_hop_seconds_count{"):
            hops[line.split('hop="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    every = {"waiting", "handling", "acknowledged", "committed", "decode", "model", "encode"}
    assert every | {"queued", "total", "features", "validate"} <= set(hops)
    assert len({hops[h] for h in every}) == 1 and hops["handling"] >= 2000  # each request counted once
    # from the record's timestamp: requests stamped with old event times (a replay) are left out
    assert 0 < hops["queued"] == hops["total"] <= hops["handling"]

    cli = [sys.executable, "-m", "driftloop.cli", "--run-dir", str(stack.run_dir)]

    def driftloop(*args: str) -> str:
        done = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    status = driftloop("status")
    assert all(f"{s:<11} ready" in status for s in localstack.SERVICES), status
    assert f"model sea: champion v{versions['after_drift']}" in status
    listing = driftloop("models", "list")
    assert f"v{versions['after_drift']}" in listing and "champion" in listing
    card = json.loads(driftloop("models", "show", "sea", str(versions["after_drift"])))
    assert card["trained"]["dataset"]["rows"] >= 2000 and card["trained"]["reason"] == "drift"
    predicted = json.loads(driftloop("predict", "sea", "x0=1", "x1=1", "x2=5"))
    assert predicted["prediction"] == 0 and predicted["model_version"] == versions["after_drift"]
    assert "200 messages" in driftloop("replay", "sea", "--n", "200")

    assert "ModelTagged" in driftloop("models", "tag", "sea", str(versions["initial"]), "note=pre-drift")
    assert "ModelRolledBack" in driftloop("models", "rollback", "sea", "--reason", "e2e")
    async with PredictionClient(stack.bootstrap, timeout_s=10) as client:
        probe = [{"x0": 1.0, "x1": 1.0, "x2": 5.0}] * 3
        assert await served_versions(client, "sea", probe, {versions["initial"]}) == {versions["initial"]}
    markdown = driftloop("models", "show", "sea", str(versions["initial"]), "--markdown")
    assert "Status:** champion" in markdown and "note=pre-drift" in markdown and "## Calibration" in markdown
    assert "## Feature importance" in markdown

    # Inputs move without labels: x0 leaves its training distribution (still inside the spec's
    # range), which also shifts what the model predicts. Both are flagged, and only x0 moved.
    rng = random.Random(3)
    shifted = [
        PredictionRequest(
            request_id=f"shift-{i}",
            model="sea",
            features={"x0": rng.uniform(8, 10), "x1": rng.uniform(0, 10), "x2": rng.uniform(0, 10)},
        )
        for i in range(2000)
    ]
    producer = make_producer(stack.bootstrap)
    await producer.start()
    try:
        await send_all(producer, Topics().predictions_requests, shifted)
    finally:
        await producer.stop()

    def both_flagged(events):
        return {e.kind for e in events if e.kind in ("covariate", "prediction")} == {
            "covariate",
            "prediction",
        }

    events: list[DriftDetected] = []
    for _ in range(15):  # re-read the topic until both flags are there (about 30 s at most)
        events = await collect(stack.bootstrap, Topics().monitor_drift, DriftDetected, 100, timeout=2)
        if both_flagged(events):
            break
    unlabelled = [e for e in events if e.kind in ("covariate", "prediction")]
    assert {(e.kind, e.feature) for e in unlabelled} == {("covariate", "x0"), ("prediction", None)}, events
    assert all(e.version == versions["initial"] and e.statistic >= 0.25 for e in unlabelled)

    if shutil.which("prometheus"):
        prometheus = f"http://127.0.0.1:{stack.ports['prometheus']}/api/v1/query"

        def scraped_all() -> bool:
            try:
                body = httpx.get(prometheus, params={"query": "sum(driftloop_service_up)"}).json()
                return float(body["data"]["result"][0]["value"][1]) == len(localstack.SERVICES)
            except (httpx.HTTPError, IndexError, KeyError):
                return False

        await wait_for(scraped_all, timeout=30, what="Prometheus to scrape all six services")
        dashboards = sorted((ROOT / "infra" / "grafana" / "dashboards").glob("*.json"))
        assert len(dashboards) == 3
        for path in dashboards:
            for panel in json.loads(path.read_text())["panels"]:
                for target in panel["targets"]:
                    # the per-service dashboard is checked for inference, the busiest service
                    expr = target["expr"].replace("$service", "inference")

                    def has_data(expr: str = expr) -> bool:
                        now = time.time()  # as Grafana asks: a range query over the last minutes
                        window = {"query": expr, "start": now - 600, "end": now, "step": 5}
                        body = httpx.get(f"{prometheus}_range", params=window).json()
                        return body["status"] == "success" and bool(body["data"]["result"])

                    await wait_for(has_data, timeout=40, what=f"data for {path.stem}: {panel['title']!r}")

    # the registry's console in a real browser, over what this loop left: versions, reasons, lineage
    await check_console(stack.url("registry"), stack.bootstrap, "sea", live=bool(shutil.which("prometheus")))


# The backtest decides as the live loop does: one synthetic stream with a known abrupt drift,
# played through the whole stack and replayed by `driftloop backtest`'s engine, gives the same
# detection, the same retrain window and the same promotions, within one feedback batch.
ROWS, DRIFT_AT, INITIAL, DELAY_ROWS, RATE = 9_000, 4_500, 2_000, 10, 500.0
TOLERANCE = 50  # rows: one monitor batch of labels at this rate, and a few ONNX-vs-sklearn flips


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
    (detected,) = replayed.detections
    detection = detected.detection
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
    # the same accuracy, once the replay serves the new version as late as the live loop did: the
    # live loop trains and swaps while requests flow (more rows on a busy machine), the replay
    # serves a candidate from the next row
    (training,) = replayed.trainings
    swapped = INITIAL + next(i for i, version in enumerate(run.versions) if version > 1)
    lag = max(0, swapped - training.row)
    lagged = Backtest(spec, history, Delay(rows=DELAY_ROWS), INITIAL, deploy_rows=lag).run()
    assert abs(100 * (run.accuracy - lagged.accuracy)) < 0.5, (run.accuracy, lagged.accuracy, lag)


@pytest.mark.slow
async def test_three_models_drifting_at_different_times_are_retrained_and_swapped_alone(stack):
    """SEA, Agrawal and STAGGER served together by one set of services: STAGGER drifts first, SEA
    later, Agrawal never. Each drift retrains and swaps only its own model."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)

    def rows_of(name: str, n: int, keep: int) -> tuple[list, int | None]:
        """The first `keep` rows of a stream whose one abrupt drift is at n / 2."""
        stream = streams.stream(name, n=n)
        rows = [(x, y, epoch + timedelta(seconds=t)) for x, y, t in stream.rows[:keep]]
        (drift,) = stream.drifts
        return live.shifted(rows, datetime.now(UTC)), drift if drift < keep else None

    plays = {
        "stagger": rows_of("stagger_abrupt", 5_000, 5_000),  # drifts at 2,500
        "sea": rows_of("sea_abrupt", 10_000, 10_000),  # drifts at 5,000
        "agrawal": rows_of("agrawal_abrupt", 12_000, 6_000),  # its drift (6,000) is not reached
    }

    async def play(model: str) -> live.LiveRun:
        rows, _ = plays[model]
        return await live.play(
            stack.bootstrap, model, rows, INITIAL, DELAY_ROWS, 300.0, timeout_s=240, shift=False
        )

    try:  # three producers write the request topic at once: see `driftloop.kafka.GapGuard`
        runs = dict(zip(plays, await asyncio.gather(*map(play, plays)), strict=True))
    except TimeoutError as exc:  # say whether the unanswered were answered on the topic after all
        missing = set(str(exc).split("(e.g. ")[-1].rstrip(")").split(", "))
        topics = Topics()
        answers = await collect(stack.bootstrap, topics.predictions_results, PredictionResult, 100_000, 10)
        dead = await collect(stack.bootstrap, topics.events_dlq, DeadLetter, 10_000, 5)
        requests = await collect(stack.bootstrap, topics.predictions_requests, PredictionRequest, 100_000, 10)
        found = [(r.request_id, r.model_version, r.error) for r in answers if r.request_id in missing]
        asked = [r.request_id for r in requests if r.request_id in missing]
        raise AssertionError(
            f"{exc}; on the results topic: {found}; on the requests topic: {asked}; dead letters: {dead[:5]}"
        ) from exc

    def served(run: live.LiveRun, rows: int | None = None) -> list[int]:
        """The versions that answered the first `rows` rows. A row may fail only as `no_champion`: it
        came before inference had loaded the model's first champion (requests on other partitions may
        already have been answered, so such failures need not all come first)."""
        failed = {error for error in run.errors[:rows] if error}
        assert failed <= {"no_champion"}, f"requests failed after the model was served: {failed}"
        return [v for v, error in zip(run.versions[:rows], run.errors[:rows], strict=True) if not error]

    registry = stack.url("registry")

    def cards(model: str) -> list[dict]:
        return httpx.get(f"{registry}/v1/versions", params={"model": model}).json()

    def retrained(model: str) -> bool:
        return any(c["status"] == "champion" and c["reason"] == "drift" for c in cards(model))

    for model in ("stagger", "sea"):
        await wait_for(lambda m=model: retrained(m), 90, f"{model}'s drift retrain to be promoted")
        assert [d.kind for d in runs[model].drifts if d.kind == "concept"], f"{model}: no concept drift"
    # Agrawal did not drift: one version, never retrained, and every answer from it
    assert [(c["version"], c["reason"], c["status"]) for c in cards("agrawal")] == [
        (1, "bootstrap", "champion")
    ]
    assert not [d for d in runs["agrawal"].drifts if d.kind == "concept"]
    assert set(served(runs["agrawal"])) == {1}
    # each drifted model served its new version within its own run; SEA, drifting last, answered
    # with its first version up to its own drift while STAGGER's was swapped and Agrawal's was not
    assert max(served(runs["stagger"])) > 1 and max(served(runs["sea"])) > 1
    sea_drift = plays["sea"][1]
    assert sea_drift is not None
    assert set(served(runs["sea"], sea_drift - INITIAL)) == {1}, "SEA was swapped before it drifted"
