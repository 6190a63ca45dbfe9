"""Quality before the labels come, on the whole local stack (broker, Redis and the six services as
processes) with a SEA champion (concept 0: the label is whether x0 + x1 > 8, 10% noise). Inputs
move twice, with no labels: first where the model is sure (far from the boundary), then onto the
boundary where the concept is hardest. The first move is flagged as covariate drift with a steady
estimate; the second drops the estimate below its floor (by default the version's holdout accuracy
less 5 points) and is said before any label of that traffic is sent. Then the labels come, and
the monitor's estimate error is exactly the estimate minus the realised accuracy of those
predictions."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import yaml

from driftloop import live, localstack, streams
from driftloop.client import PredictionClient, make_producer, send_all
from driftloop.contracts import DriftDetected, Feedback, ModelPromoted
from driftloop.demo import Watcher, wait_until
from driftloop.estimation import Calibration, chance_right
from driftloop.settings import Topics
from tests.conftest import ROOT
from tests.helpers import collect, metric, served_versions


@pytest.fixture
def stack(tmp_path):
    """The local stack with only the SEA spec (default estimate settings), a short covariate window,
    slices by x2 (the input the concept ignores) and no automatic retraining."""
    models = tmp_path / "models"
    models.mkdir()
    spec = yaml.safe_load((ROOT / "models" / "sea.yaml").read_text())
    spec["drift"]["covariate"] = {"window": 300, "every": 100}
    spec["retrain"] = {"trigger": "none"}  # v1 stays champion whatever its labels say
    spec["slices"] = {"by": [{"input": "x2", "edges": [5]}]}  # SEA's noise input, cut in two
    (models / "sea.yaml").write_text(yaml.safe_dump(spec))
    running = localstack.up(tmp_path / "run", models)
    yield running
    localstack.down(tmp_path / "run")


def concept(x: dict) -> int:
    return int(x["x0"] + x["x1"] > 8)


def on_the_boundary(rng: random.Random, n: int, width: float = 0.2) -> list[dict]:
    """Inputs with x0 + x1 within `width` of 8 (x0, x1 in [0, 10])."""
    rows = []
    for _ in range(n):
        total = rng.uniform(8 - width, 8 + width)
        x0 = rng.uniform(max(0.0, total - 10), min(10.0, total))
        rows.append({"x0": x0, "x1": total - x0, "x2": rng.uniform(0, 10)})
    return rows


@pytest.mark.slow
async def test_a_shift_to_where_the_model_is_unsure_is_flagged_before_its_labels(stack):
    topics = Topics()
    history = streams.stream("sea_abrupt", n=10_000).rows[:3_000]  # concept 0 only
    assert sum(concept(x) == y for x, y, _ in history) > 0.85 * len(history), "the concept, as generated"
    watcher = await Watcher.tail(stack.bootstrap, topics)
    producer = make_producer(stack.bootstrap)
    await producer.start()
    rng = random.Random(11)
    try:
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        rows = live.shifted([(x, y, epoch + timedelta(seconds=t)) for x, y, t in history], datetime.now(UTC))
        await live.first_model(producer, watcher, topics, "sea", rows, "qbl", 180)
        (promoted,) = [p for p in watcher.promotions if p.model == "sea"]
        assert isinstance(promoted, ModelPromoted) and promoted.calibration is not None
        calibration = Calibration.from_dict(promoted.calibration.model_dump())
        assert calibration.overall is not None
        floor = calibration.overall - 0.05  # the spec's default drift.estimate.max_drop; gate floor 0.6
        version = str(promoted.version)

        async with PredictionClient(stack.bootstrap, timeout_s=30) as client:
            probe = [{"x0": 1.0, "x1": 1.0, "x2": 1.0}]  # answered once inference has loaded v1
            assert await served_versions(client, "sea", probe, {promoted.version}, timeout=60) == {
                promoted.version
            }
            # an answer with its explanation, by the version that answered: x2 is noise to SEA
            explained = await client.predict("sea", {"x0": 6.0, "x1": 6.0, "x2": 5.0}, explain=True)
            assert explained.model_version == promoted.version and explained.explanation is not None
            assert set(explained.explanation) == {"x0", "x1", "x2"}
            assert min(explained.explanation["x0"], explained.explanation["x1"]) > 0.05
            assert abs(explained.explanation["x2"]) < 0.05
            # its own traffic: the estimate settles near the holdout's accuracy
            own = await client.predict_many("sea", [{k: rng.uniform(0, 10) for k in ("x0", "x1", "x2")}
                                                    for _ in range(600)])  # fmt: skip
            await wait_until(lambda: metric(stack, "monitor", "driftloop_monitor_estimated_accuracy") > 0, 30,
                             "the first estimate")  # fmt: skip
            before = metric(stack, "monitor", "driftloop_monitor_estimated_accuracy", version=version)
            exported = metric(stack, "monitor", "driftloop_monitor_estimate_floor", version=version)
            assert exported == pytest.approx(floor) and before > floor

            # inputs move where the model is sure (x0 + x1 far below 8): covariate drift, steady estimate
            sure = [
                {"x0": rng.uniform(0, 3), "x1": rng.uniform(0, 3), "x2": rng.uniform(0, 10)}
                for _ in range(900)
            ]
            sure_results = await client.predict_many("sea", sure)
            await wait_until(lambda: any(d.kind == "covariate" for d in watcher.distribution), 60,
                             "covariate drift of the sure inputs")  # fmt: skip
            covariate = next(d for d in watcher.distribution if d.kind == "covariate")
            assert covariate.feature in {"x0", "x1"} and covariate.estimate is not None
            assert covariate.estimate.accuracy > floor, "the inputs moved, the estimate did not fall"
            assert not [d for d in watcher.distribution if d.kind == "estimate"]

            # inputs move onto the boundary: the estimate falls below the floor with no label sent
            hard_inputs = on_the_boundary(rng, 900)
            hard = await client.predict_many("sea", hard_inputs)
            await wait_until(lambda: any(d.kind == "estimate" for d in watcher.distribution), 60,
                             "the estimate to fall below the floor")  # fmt: skip
        fell = next(d for d in watcher.distribution if d.kind == "estimate")
        assert fell.detector == "cbpe" and fell.version == promoted.version
        assert fell.estimate is not None and fell.estimate.accuracy < floor < before
        # the request that tipped it came with the moved traffic (a monitor batch may mix the last
        # sure answers of one partition with the first boundary answers of another)
        assert fell.detected_request_id in {r.request_id for r in [*sure_results, *hard]}
        assert metric(stack, "monitor", "driftloop_monitor_labelled_total") == 0, "no label came yet"
        assert len(own) == 600 and all(r.error is None and r.probabilities for r in [*own, *hard])

        # the labels of the boundary traffic come: the realised accuracy is below the floor as said,
        # and the estimate error is the estimate minus the realised accuracy of those predictions
        labels = [concept(x) if rng.random() >= 0.1 else 1 - concept(x) for x in hard_inputs]
        feedback = [
            Feedback(request_id=r.request_id, model="sea", label=y) for r, y in zip(hard, labels, strict=True)
        ]
        await send_all(producer, topics.predictions_feedback, feedback, key_of=lambda f: f.request_id)
        labelled = "driftloop_monitor_labelled_total"
        await wait_until(lambda: metric(stack, "monitor", labelled) >= len(hard), 60, "the labels to join")
        top = np.array([max(r.probabilities.values()) for r in hard if r.probabilities])
        expected = float(chance_right(top, calibration).mean())
        realised = float(np.mean([str(r.prediction) == str(y) for r, y in zip(hard, labels, strict=True)]))
        assert realised < floor
        assert metric(stack, "monitor", "driftloop_monitor_accuracy", version=version) == pytest.approx(
            realised
        )
        error = metric(stack, "monitor", "driftloop_monitor_estimate_error", version=version)
        assert error == pytest.approx(expected - realised, abs=1e-9)
    finally:
        await producer.stop()
        await watcher.close()


@pytest.mark.slow
async def test_a_slice_whose_concept_drifts_alone_is_flagged_as_that_slice(stack):
    """After 3,000 labelled rows of concept 0, the labels of the requests with x2 < 5 are flipped
    (that slice's concept changes) while the others keep it: the monitor names x2 < 5."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    rows = [
        (x, y, epoch + timedelta(seconds=t))
        for x, y, t in streams.stream("sea_abrupt", n=10_000).rows[:5_000]
    ]
    drifted = [(x, 1 - y if x["x2"] < 5 else y, t) for x, y, t in rows[3_000:]]
    run = await live.play(stack.bootstrap, "sea", [*rows[:3_000], *drifted], 3_000, 50, 500.0, timeout_s=120)
    assert set(run.errors) <= {"", "no_champion"}
    drifts = await collect(stack.bootstrap, Topics().monitor_drift, DriftDetected, 100, 10,
                           until=lambda d: d.kind == "slice")  # fmt: skip
    (flagged,) = [d for d in drifts if d.kind == "slice"]
    assert (flagged.feature, flagged.segment, flagged.detector) == ("x2", "< 5", "slice_gap")
    assert flagged.statistic is not None and flagged.statistic > 0.15
    below, above = (
        metric(stack, "monitor", "driftloop_monitor_slice_accuracy", input="x2", slice=s)
        for s in ("< 5", ">= 5")
    )
    assert below < 0.5 < 0.8 < above
    assert metric(stack, "monitor", "driftloop_monitor_slice_gap", input="x2", measure="accuracy") > 0.15
