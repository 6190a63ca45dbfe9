"""`make bench-governance`: from a TrainModel command to the first prediction served by the new
version, through the real local stack (broker, redis, six services), on 20k SEA rows with the spec's
HistGradientBoosting; p50 over 5 runs. The same-run reference is the in-process fit + ONNX
conversion of the same rows: what the pipeline adds on top of the training itself.

The stack runs twice in the same bench: artifacts in a directory (file), then on a local
S3-protocol server (s3: training uploads, the registry reads each one back, inference downloads
it into its cache); goal for s3: within 1.5x of file.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import tempfile
import time
import uuid
from pathlib import Path

from threadpoolctl import threadpool_limits

from bench.common import p50, table, write
from driftloop import datasets, localstack
from driftloop.client import make_producer, send_all
from driftloop.contracts import ModelTrained, Observation, PredictionRequest, PredictionResult, TrainModel
from driftloop.features import FeatureSet
from driftloop.fitting import fit, holdout_start
from driftloop.kafka import tail_from_end
from driftloop.settings import Topics
from driftloop.spec import load_spec
from driftloop_training.adapters import convert
from driftloop_training.settings import TrainingSettings

ROOT = Path(__file__).resolve().parents[1]
ROWS, RUNS, LOAD_PER_S = 20_000, 5, 200
S3_OVER_FILE_GOAL = 1.5


def reference_fit_convert(rows: list[tuple[dict, int]]) -> float:
    """Seconds to fit and convert the spec's model on the same training rows, in process."""
    spec = load_spec(ROOT / "models" / "sea.yaml")
    feature_set = FeatureSet(spec)
    X, kept, refused = feature_set.encode_many([x for x, _ in rows])
    assert len(kept) == len(rows) and not refused, refused  # generated rows are all valid
    y = [label for _, label in rows]
    cut = holdout_start(len(rows), spec.training.holdout_fraction)
    started = time.perf_counter()
    with threadpool_limits(limits=TrainingSettings().threads):  # as the training service does
        estimator, _ = fit(spec, X[:cut], y[:cut])
        convert(estimator, X.shape[1])
    return time.perf_counter() - started


async def measure(stack: localstack.Stack, rows: list[tuple[dict, int]]) -> dict:
    topics = Topics()
    producer = make_producer(stack.bootstrap)
    await producer.start()
    results = await tail_from_end(stack.bootstrap, topics.predictions_results)
    trained = await tail_from_end(stack.bootstrap, topics.models_trained)
    served: dict[int, float] = {}  # version -> first time a result named it
    runs: list[ModelTrained] = []

    async def read_results() -> None:
        async for record in results:
            version = PredictionResult.model_validate_json(record.value).model_version
            served.setdefault(version, time.monotonic())

    async def read_trained() -> None:
        async for record in trained:
            runs.append(ModelTrained.model_validate_json(record.value))

    async def load() -> None:  # steady prediction traffic, so a swap shows up in results at once
        probe = rows[0][0]
        for i in itertools.count():
            request = PredictionRequest(request_id=f"bench-{i}", model="sea", features=probe)
            await send_all(producer, topics.predictions_requests, [request])
            await asyncio.sleep(1 / LOAD_PER_S)

    observations = [
        Observation(event_id=f"h{i}-{uuid.uuid4().hex[:6]}", model="sea", features=x, label=y)
        for i, (x, y) in enumerate(rows)
    ]
    for start in range(0, len(observations), 2000):
        await send_all(producer, topics.events_raw, observations[start : start + 2000])
    readers = [asyncio.create_task(read_results()), asyncio.create_task(read_trained())]
    traffic = asyncio.create_task(load())
    timings = []
    try:
        for run in range(RUNS + 1):  # run 0 trains the first champion; it is not timed
            expected = run + 1
            started = time.monotonic()
            command = TrainModel(command_id=uuid.uuid4().hex, model="sea", reason="manual",
                                 min_rows=ROWS, last_n=ROWS)  # fmt: skip
            await send_all(producer, topics.training_requests, [command])
            deadline = started + 120
            while expected not in served:
                if time.monotonic() > deadline:
                    for service in ("training", "registry", "inference"):  # why, for the reader
                        log = (stack.run_dir / "logs" / f"{service}.log").read_text(errors="replace")
                        print(f"--- {service}.log, last lines", *log.splitlines()[-8:], sep="\n")
                    sys.exit(f"version {expected} was not served within 120 s")
                await asyncio.sleep(0.005)
            if run:
                timings.append(served[expected] - started)
                print(f"  run {run}: v{expected} served {timings[-1]:.2f} s after TrainModel", flush=True)
    finally:
        traffic.cancel()
        for task in readers:
            task.cancel()
        await asyncio.gather(traffic, *readers, return_exceptions=True)
        await producer.stop()
        await results.stop()
        await trained.stop()
    timed = runs[1:]
    return {
        "timings": timings,
        "fit_s": [t.durations_s["fit"] for t in timed],
        "convert_s": [t.durations_s["convert"] for t in timed],
        "evaluate_s": [t.durations_s["evaluate"] for t in timed],
        "artifact_bytes": timed[-1].artifact.size_bytes,
        "parity": max(t.parity_max_abs_diff for t in timed),
        "rows": timed[-1].dataset.rows,
    }


def main() -> None:
    rows = list(itertools.islice(datasets.sea(0, seed=11), ROWS))
    reference = [reference_fit_convert(rows) for _ in range(3)]
    by_backend = {}
    for backend in ("file", "s3"):
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            print(f"bench-governance: the local stack with artifacts on {backend} in {run_dir}", flush=True)
            stack = localstack.up(run_dir, ROOT / "models", object_store=backend)
            try:
                by_backend[backend] = asyncio.run(measure(stack, rows))
            finally:
                localstack.down(run_dir)
    figures, s3 = by_backend["file"], by_backend["s3"]
    train_to_serve, s3_train_to_serve = p50(figures["timings"]), p50(s3["timings"])
    reference_p50 = p50(reference)
    result = {
        "train_to_serve_p50_s": round(train_to_serve, 3),
        "train_to_serve_runs_s": [round(t, 3) for t in figures["timings"]],
        "fit_p50_s": round(p50(figures["fit_s"]), 3),
        "convert_p50_s": round(p50(figures["convert_s"]), 3),
        "evaluate_p50_s": round(p50(figures["evaluate_s"]), 3),
        "in_process_fit_convert_p50_s": round(reference_p50, 3),
        "ratio_to_in_process": round(train_to_serve / reference_p50, 2),
        "artifact_bytes": figures["artifact_bytes"],
        "parity_max_abs_diff": figures["parity"],
        "rows": figures["rows"],
        "target_train_to_serve_s": 10.0,
        "s3_train_to_serve_p50_s": round(s3_train_to_serve, 3),
        "s3_train_to_serve_runs_s": [round(t, 3) for t in s3["timings"]],
        "s3_over_file": round(s3_train_to_serve / train_to_serve, 2),
        "s3_over_file_goal": S3_OVER_FILE_GOAL,
    }
    print()
    print(table(
        f"bench-governance: TrainModel -> first result from the new version ({RUNS} runs, "
        f"{figures['rows']} SEA rows, HistGradientBoosting)",
        [
            ("train_to_serve p50 (s)", result["train_to_serve_p50_s"]),
            ("train_to_serve runs (s)", ", ".join(f"{t:.2f}" for t in result["train_to_serve_runs_s"])),
            ("  fit p50 in service (s)", result["fit_p50_s"]),
            ("  ONNX convert p50 (s)", result["convert_p50_s"]),
            ("  evaluate p50 (s)", result["evaluate_p50_s"]),
            ("in-process fit+convert p50 (s)", result["in_process_fit_convert_p50_s"]),
            ("ratio train_to_serve / in-process", result["ratio_to_in_process"]),
            ("artifact bytes", result["artifact_bytes"]),
            ("parity max |p_onnx - p_sklearn|", f"{result['parity_max_abs_diff']:.2e}"),
            ("target (s)", "<= 10"),
            ("s3 backend: train_to_serve p50 (s)", result["s3_train_to_serve_p50_s"]),
            ("s3 backend: runs (s)", ", ".join(f"{t:.2f}" for t in result["s3_train_to_serve_runs_s"])),
            ("s3 / file", result["s3_over_file"]),
            ("goal s3 / file", f"<= {S3_OVER_FILE_GOAL}"),
        ],
    ))  # fmt: skip
    print(f"\nwrote {write('governance', result)}")


if __name__ == "__main__":
    main()
