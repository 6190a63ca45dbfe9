"""`make bench-drift`: drift detection through the running system, on streams with known drifts.

One local stack (broker, redis, six services) serves one model per stream; each stream is a model
spec from `models/` under its own name (`sea-0-3`, ...).

The bench first measures the machine: the highest closed-loop rate this stack sustains here
(`bench.stack`'s search, steps of `PROBE_STEP_S` seconds, on a model of its own), and sends the
stationary part at `HEADROOM` of it, so that it measures detection, not a backlog. While a stream
runs, every consumer group's lag is sampled; a group more than `LAG_S` seconds of its input behind
at the onset, or a stream whose loop does not close, fails the bench (exit status 1) with the reason.

Per stream: 5,000 labelled rows of the first concept train v1, then 100,000 stationary requests
(false alarms are counted here), then an abrupt drift and 20,000 more requests at 1,000 requests/s:
the drift retrain (on the spec's `retrain.min_rows` labelled rows after the change point, refitted
on its holdout) serves; the demo specs retrain on detections only.
Accuracy before the drift is that of the last 5,000 answers before the onset, after recovery that of
the last 5,000 answers. Labels come back 0.5 s after each request, as an
application would send them.

For comparison, River's ADWIN runs offline, with the spec's parameters and warm-up, on exactly the
0/1 error stream of the answers the system gave, in request order (the detector alone on the
same stream). The online delay is the index of the request whose label made the monitor fire,
minus the onset; the monitor feeds each batch's outcomes in request order, but the partitions of
three topics still complete joins slightly out of order across batches. Targets
(issue 6): 0 false alarms on the stationary part; online delay within offline delay + one feedback
batch (the labels an application sends per tick, 50 at 1k req/s); onset -> new version serving under
30 s; accuracy after recovery within 2 points of the accuracy before the drift.

Before labels (issue 20): two more streams keep their concept and move the inputs, at the onset, to
where a model of the history is least sure (`demo.uncertain`): a covariate shift that hurts. Per
stream, the accuracy the monitor estimates from served probabilities (the version's calibration on
windows of 500 answers, as the monitor does) against what the labels then showed: its mean absolute
error before the onset (calibration holds: small) and after it (a concept drift is invisible to it:
large), the estimate's alarms on the stationary part (target 0), and the time from the onset to the
estimate alarm next to the labelled detection's. A covariate stream fails the bench when the estimate
does not fall below its floor. Last, per dataset, what inference spends per request scoring a
batch of 1,000 with and without `explain` (the dataset's model fitted in the bench, best of 5).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.common import table, write
from bench.stack import LAG_S, LagSampler, Traffic, champion, groups, labelled_traffic, sustained
from driftloop import demo, localstack
from driftloop.algorithms import DETECTORS
from driftloop.estimation import Calibration, window_errors
from driftloop.settings import Topics
from driftloop.spec import ModelSpec, load_spec

ROOT = Path(__file__).resolve().parents[1]
# (dataset, concept before, concept after, covariate shift at the onset); the last two keep their
# concept and move the inputs to where a model of the history is least sure (`demo.uncertain`)
STREAMS = [
    ("sea", 0, 3, ""),
    ("sea", 3, 0, ""),
    ("sea", 0, 2, ""),
    ("sea", 1, 3, ""),
    ("agrawal", 0, 2, ""),
    ("stagger", 0, 2, ""),
    ("sea", 0, 0, "uncertain"),
    ("agrawal", 0, 0, "uncertain"),
]
ESTIMATE_WINDOW = 500  # answers per window the estimate's error is measured on (the monitor's default)
TICK_S = 0.05  # the demo application sends due labels every tick
PROBE = "capacity-probe"  # the model the sustained rate is measured on
PROBE_STEP_S = 20.0
HEADROOM = 0.6  # the stationary part is sent at this share of the measured sustained rate


def stream_name(dataset: str, before: int, after: int, shift: str) -> str:
    return f"{dataset}-{before}-{after}" + (f"-{shift}" if shift else "")


def stream_spec(dataset: str, before: int, after: int, shift: str) -> ModelSpec:
    """The dataset's spec from models/, renamed for one stream."""
    spec = load_spec(ROOT / "models" / f"{dataset}.yaml")
    return spec.model_copy(update={"name": stream_name(dataset, before, after, shift)})


def offline_adwin(
    answers: list[tuple[int, int, int]], spec: ModelSpec, onset: int, version: int
) -> dict[str, Any]:
    """River's ADWIN (spec parameters, spec warm-up) on the 0/1 errors of one version's answers, in
    request order: the first detection at or after the onset, and detections before it."""
    detector = DETECTORS[spec.drift.detector](**spec.drift.params)
    errors = [(i, 1 - correct) for i, v, correct in sorted(answers) if v == version]
    early, delay = 0, None
    for n, (i, error) in enumerate(errors):
        if n < spec.drift.warmup_samples:
            continue
        detector.update(error)
        if detector.drift_detected:
            if i < onset:
                early += 1
            else:
                delay = i - onset
                break
    return {"offline_adwin_delay_samples": delay, "offline_false_alarms": early}


def read_answers(path: Path) -> tuple[list[tuple[int, int, int]], dict[int, float]]:
    """(request, version, correct) per answer, and each answered request's top-class probability."""
    with path.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    answers = [(int(r["request"]), int(r["version"]), int(r["correct"])) for r in rows]
    return answers, {int(r["request"]): float(r["confidence"]) for r in rows if r["confidence"]}


def estimate_errors(
    answers: list[tuple[int, int, int]],
    confidence: dict[int, float],
    calibrations: dict[str, Any],
    onset: int,
    version: int,
) -> dict[str, float | None]:
    """Mean absolute error of the accuracy estimate (points), on windows of `ESTIMATE_WINDOW`
    answers of the version serving at the onset, before and after it; each answer through that
    version's calibration, as the monitor does."""
    table = calibrations.get(str(version))
    calibration = None if table is None else Calibration.from_dict(table)
    out: dict[str, float | None] = {}
    for part, keep in (("before", lambda i: i < onset), ("after", lambda i: i >= onset)):
        rows = [
            (confidence[i], c) for i, v, c in sorted(answers) if v == version and keep(i) and i in confidence
        ]
        errors = window_errors(
            np.array([p for p, _ in rows]), np.array([c for _, c in rows]), calibration, ESTIMATE_WINDOW
        )
        out[part] = round(100 * float(np.mean(np.abs(errors))), 2) if errors else None
    return out


async def capacity(stack: localstack.Stack) -> tuple[float, list[dict[str, Any]]]:
    """The highest closed-loop rate the stack sustains on this machine, and the steps measured."""
    traffic = Traffic(PROBE)
    await champion(stack.bootstrap, Topics(), traffic)
    async with labelled_traffic(stack, traffic, PROBE_STEP_S) as rig:
        return await sustained(rig, ceiling=64_000, bisections=1)


def lag_at(samples: list[tuple[float, dict[str, int]]], when: float) -> dict[str, int]:
    """Every group's lag in the sample taken nearest to `when`."""
    return min(samples, key=lambda sample: abs(sample[0] - when))[1] if samples else {}


def problems(stream: dict[str, Any]) -> list[str]:
    """Why a stream failed the bench: a group behind at the onset, a loop that did not close (a
    concept drift), an estimate that did not fall (a covariate shift that hurts)."""
    found = [
        f"{stream['name']}: {group} was {lag:,} records behind at the onset (bound {bound:,})"
        for group, (lag, bound) in stream["lag_at_onset"].items()
        if lag > bound
    ]
    if stream["shift"]:
        if stream["onset_to_estimate_alarm_s"] is None:
            found.append(f"{stream['name']}: the estimate did not fall below its floor")
        return found
    if stream["delay_samples"] is None:
        found.append(f"{stream['name']}: the drift was not detected")
    if stream["onset_to_serving_s"] is None:
        found.append(f"{stream['name']}: no new version served after the onset")
    return found


async def run_stream(
    stack: localstack.Stack,
    models_dir: Path,
    out: Path,
    stream: tuple[str, int, int, str],
    args: Any,
) -> dict[str, Any]:
    dataset, before, after, shift = stream
    spec = stream_spec(*stream)
    scenario = demo.Scenario(
        shift=shift,
        dataset=dataset,
        concept_before=before,
        concept_after=after,
        model=spec.name,
        history=5_000,
        before=args.stationary,
        after=args.after,
        recovery_window=5_000,
        rate_per_s=args.rate,
        stationary_rate_per_s=args.stationary_rate,
        steady_requests=args.steady,
        timeout_s=args.stationary / args.stationary_rate + 240,
    )
    timeline = demo.Timeline()
    watched = groups(Topics())
    with LagSampler(stack.bootstrap, watched, every_s=2) as sampler:
        summary = await demo.run(
            stack.bootstrap, scenario, out / spec.name, models_dir=models_dir, timeline=timeline
        )
    onset = timeline.started + timeline.marks.get("drift_onset", float("inf"))
    at_onset = lag_at(sampler.samples, onset)
    answers, confidence = read_answers(out / spec.name / "answers.csv")
    # the version serving at the onset is the one the offline detector watches
    onset_version = max((v for i, v, _ in answers if i < scenario.before), default=0)
    offline = offline_adwin(answers, spec, scenario.before, onset_version)
    errors = estimate_errors(answers, confidence, summary["calibrations"], scenario.before, onset_version)
    accuracy = summary["accuracy"]
    gap = None
    if accuracy["before_drift"] is not None and accuracy["after_recovery"] is not None:
        gap = round(100 * (accuracy["before_drift"] - accuracy["after_recovery"]), 2)
    return {
        "name": scenario.label,
        "model": spec.name,
        "shift": shift,
        "estimate_error_points": errors,
        "estimate_false_alarms": summary["estimate_alarms_before_onset"],
        "onset_to_estimate_alarm_s": summary["wall_seconds"]["onset_to_estimate_alarm"],
        "delay_samples": summary["detection_delay_samples"],
        **offline,
        "delay_tolerance_samples": None
        if offline["offline_adwin_delay_samples"] is None
        else offline["offline_adwin_delay_samples"] + int(args.rate * TICK_S),
        "false_alarms": summary["false_alarms"],
        "distribution_alarms": summary["distribution_alarms"],
        "stationary_samples": scenario.before,
        "onset_to_detection_s": summary["wall_seconds"]["onset_to_detection"],
        "onset_to_serving_s": summary["wall_seconds"]["onset_to_new_version_serving"],
        "accuracy_before": accuracy["before_drift"],
        "accuracy_drifted": accuracy["after_drift_old_model"],
        "accuracy_recovered": accuracy["after_recovery"],
        "recovery_gap_points": gap,
        "promotions": summary["versions"]["promotions"],
        "lag_at_onset": {
            group: (at_onset.get(group, 0), int(LAG_S * args.rate * len(inputs)))
            for group, inputs in watched.items()
        },
    }


def explanation_cost(dataset: str, requests: int = 1_000, rounds: int = 5) -> dict[str, float]:
    """Microseconds per request that inference spends scoring a batch of `requests` of the
    dataset's model (its spec's algorithm fitted here on 5,000 rows, as ONNX), without and with
    `explain` on every request: the best of `rounds`, measured in this run."""
    from driftloop import datasets, fitting
    from driftloop.artifacts import OnnxClassifier
    from driftloop.explain import background, input_columns
    from driftloop.features import FeatureSet
    from driftloop_inference.domain import Lineup, Request, ServingModel, score
    from driftloop_training.adapters import convert

    spec = load_spec(ROOT / "models" / f"{dataset}.yaml")
    features = FeatureSet(spec)
    rows = list(
        itertools.islice(datasets.conform(spec, datasets.synthetic(dataset, 0, 42)), 5_000 + requests)
    )
    X, _, _ = features.encode_many([x for x, _ in rows[:5_000]])
    estimator = fitting.train_candidate(spec, X, [y for _, y in rows[:5_000]]).estimator
    classes = fitting.classes_of(estimator)
    classifier = OnnxClassifier(convert(estimator, X.shape[1]), classes, features.names)
    back = background(
        input_columns(spec, features.names), features.names, fitting.reference_stats(X, features.names)
    )
    lineup = Lineup({spec.name: ServingModel(spec.name, 1, classifier, features, back)})
    out = {}
    for name, explain in (("score_us", False), ("explain_us", True)):
        batch = [Request(f"r{i}", spec.name, x, explain=explain) for i, (x, _) in enumerate(rows[5_000:])]
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            score(batch, {spec.name: spec}, lineup)
            best = min(best, time.perf_counter() - started)
        out[name] = round(best / len(batch) * 1e6, 1)
    out["background_rows"] = back.rows
    return out


def _max(values: list[Any]) -> Any:
    known = [v for v in values if v is not None]
    return max(known) if len(known) == len(values) and known else None


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}s"


def report(streams: list[dict[str, Any]], args: Any) -> dict[str, Any]:
    concept = [s for s in streams if not s["shift"]]
    figures = {
        "streams": streams,
        "false_alarms_stationary_total": sum(s["false_alarms"] for s in streams),
        "estimate_false_alarms_total": sum(s["estimate_false_alarms"] for s in streams),
        "stationary_samples_total": sum(s["stationary_samples"] for s in streams),
        "onset_to_serving_s": _max([s["onset_to_serving_s"] for s in concept]),
        "recovery_gap_points": _max([s["recovery_gap_points"] for s in concept]),
        "estimate_error_stationary_points": _max([s["estimate_error_points"]["before"] for s in streams]),
        "onset_to_estimate_alarm_s": _max([s["onset_to_estimate_alarm_s"] for s in streams if s["shift"]]),
        "rate_per_s": args.rate,
        "sustained_per_s": args.sustained,
        "sustained_steps": args.sustained_steps,
        "stationary_rate_per_s": args.stationary_rate,
        "feedback_batch": int(args.rate * TICK_S),
        "monitor_lag_at_onset": max(s["lag_at_onset"]["monitor"][0] for s in streams),
        "explanation_cost": args.explanation_cost,
    }
    header = (
        f"{'stream':<22}{'delay':>7}{'offline':>9}{'within':>8}{'false':>7}{'in/pred':>9}"
        f"{'onset->':>9}{'acc before':>12}{'drifted':>9}{'recovered':>11}{'gap pts':>9}{'mon lag':>9}"
    )
    lines = [header, "-" * len(header)]
    for s in streams:
        within = (
            "n/a"
            if s["delay_samples"] is None or s["delay_tolerance_samples"] is None
            else ("yes" if s["delay_samples"] <= s["delay_tolerance_samples"] else "no")
        )
        alarms = f"{s['distribution_alarms']['covariate']}/{s['distribution_alarms']['prediction']}"
        serving = "n/a" if s["onset_to_serving_s"] is None else f"{s['onset_to_serving_s']:.1f}s"
        lines.append(
            f"{s['name']:<22}{s['delay_samples']!s:>7}{s['offline_adwin_delay_samples']!s:>9}{within:>8}"
            f"{s['false_alarms']:>7}{alarms:>9}{serving:>9}{s['accuracy_before']!s:>12}"
            f"{s['accuracy_drifted']!s:>9}{s['accuracy_recovered']!s:>11}{s['recovery_gap_points']!s:>9}"
            f"{s['lag_at_onset']['monitor'][0]:>9}"
        )
    header = (
        f"{'before labels':<22}{'est err before':>16}{'after':>8}{'est false':>11}"
        f"{'onset->est':>12}{'onset->labelled':>17}"
    )
    lines += ["", header, "-" * len(header)]
    for s in streams:
        errors = s["estimate_error_points"]
        lines.append(
            f"{s['name']:<22}{errors['before']!s:>16}{errors['after']!s:>8}{s['estimate_false_alarms']:>11}"
            f"{_seconds(s['onset_to_estimate_alarm_s']):>12}{_seconds(s['onset_to_detection_s']):>17}"
        )
    header = (
        f"{'explanations':<22}{'score us/req':>14}{'explained us/req':>18}{'x':>6}{'background rows':>17}"
    )
    lines += ["", header, "-" * len(header)]
    for dataset, cost in args.explanation_cost.items():
        ratio = cost["explain_us"] / cost["score_us"] if cost["score_us"] else float("nan")
        lines.append(
            f"{dataset:<22}{cost['score_us']:>14}{cost['explain_us']:>18}{ratio:>6.1f}{cost['background_rows']:>17}"
        )
    print("\n".join(lines))
    print(
        table(
            "bench-drift totals",
            [
                ("stationary samples (all streams)", figures["stationary_samples_total"]),
                ("false alarms on them (target 0)", figures["false_alarms_stationary_total"]),
                ("estimate alarms on them (target 0)", figures["estimate_false_alarms_total"]),
                (
                    "worst estimate error before the onset, points",
                    figures["estimate_error_stationary_points"],
                ),
                ("worst onset -> estimate alarm s (covariate shifts)", figures["onset_to_estimate_alarm_s"]),
                ("worst onset -> new version serving s (target < 30)", figures["onset_to_serving_s"]),
                ("worst recovery gap, accuracy points (target <= 2)", figures["recovery_gap_points"]),
                ("sustained closed-loop rate measured here, req/s", args.sustained),
                (
                    "drift-phase rate req/s / stationary rate req/s",
                    f"{args.rate:.0f} / {args.stationary_rate:.0f}",
                ),
                ("worst monitor lag at an onset, records", figures["monitor_lag_at_onset"]),
                ("one feedback batch (labels per application tick)", figures["feedback_batch"]),
            ],
        )
    )
    return figures


async def run_streams(
    stack: localstack.Stack, models_dir: Path, out: Path, args: Any
) -> list[dict[str, Any]]:
    args.sustained, args.sustained_steps = None, []
    if args.stationary_rate is None:
        print(f"measuring the sustained closed-loop rate (steps of {PROBE_STEP_S:.0f} s) ...", flush=True)
        args.sustained, steps = await capacity(stack)
        args.sustained_steps = [{k: step[k] for k in ("rate", "kept_up", "behind")} for step in steps]
        if not args.sustained:
            raise SystemExit(f"the stack did not keep up with {steps[0]['rate']:.0f} req/s: {steps[0]}")
        args.stationary_rate = max(args.rate, round(HEADROOM * args.sustained, -1))
        print(f"sustained {args.sustained:.0f} req/s: stationary part at {args.stationary_rate:.0f} req/s")
    results = []
    for stream in args.streams:
        print(f"\n=== {stream_name(*stream)} ===", flush=True)
        results.append(await run_stream(stack, models_dir, out, stream, args))
    return results


def main(args: Any) -> int:
    args.streams = [s for s in STREAMS if not args.only or stream_name(*s) in args.only]
    with (
        contextlib.nullcontext(args.keep)
        if args.keep
        else tempfile.TemporaryDirectory(prefix="driftloop-bench-drift-")
    ) as tmp:
        models_dir = Path(tmp) / "models"
        models_dir.mkdir(parents=True)
        probe = load_spec(ROOT / "models" / "sea.yaml").model_copy(update={"name": PROBE})
        (models_dir / f"{PROBE}.yaml").write_text(yaml.safe_dump(probe.model_dump(mode="json")))
        for stream in args.streams:
            spec = stream_spec(*stream)
            (models_dir / f"{spec.name}.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
        stack = localstack.up(Path(tmp) / "run", models_dir)
        try:
            results = asyncio.run(run_streams(stack, models_dir, Path(tmp) / "out", args))
        finally:
            localstack.down(Path(tmp) / "run")
    args.explanation_cost = {d: explanation_cost(d) for d in sorted({s[0] for s in args.streams})}
    figures = report(results, args)
    print(f"\nwritten {write('drift', figures)}")
    failed = [problem for stream in results for problem in problems(stream)]
    for problem in failed:
        print(f"FAILED {problem}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stationary", type=int, default=100_000, help="stationary requests per stream")
    parser.add_argument(
        "--stationary-rate",
        type=float,
        help=f"req/s of the stationary part (default: {HEADROOM} of the sustained rate measured first)",
    )
    parser.add_argument("--rate", type=float, default=1_000.0, help="req/s around the drift")
    parser.add_argument("--after", type=int, default=20_000, help="requests after the onset")
    parser.add_argument(
        "--steady",
        type=int,
        default=10_000,
        help="the last stationary requests, sent at --rate (no backlog at the onset)",
    )
    parser.add_argument(
        "--only", nargs="*", help="streams to run, e.g. sea-0-3 stagger-0-2 sea-0-0-uncertain"
    )
    parser.add_argument("--keep", help="a new directory to run in and keep: services' logs, answers, plots")
    raise SystemExit(main(parser.parse_args()))
