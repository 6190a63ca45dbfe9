"""`make bench-learning`: which retraining policy keeps a model best, on real and synthetic drifting
streams, with labels arriving late. Every stream of `driftloop.streams` is replayed by
`driftloop.backtest` under the default policy grid (the model spec's own policy, never retrain,
periodic schedules with and without refitting on the holdout, drift-triggered with each window
kind, detector and sensitivity variants, both triggers, recency weighting, window choices, the
bare-margin gate). The references are measured in the same run, on the same rows: never
retraining, and the best plain periodic schedule of at most 20 retrains ("retrain every N rows
on the last W", no refit) as well as the best periodic schedule with the spec's training.

The accuracy estimated before labels is judged on the same replays (the spec's own policy): for
windows of 250, 500 and 1,000 rows and floors 3, 5 and 10 points under each version's holdout
accuracy, its error against the labels' accuracy on the same rows, its alarms (confirmed or not by
the labels) and the labels' falls it caught (`Result.estimate_figures`): where the defaults of
`drift.estimate` come from.

Prints one table per stream and a summary; writes `bench/results/learning.json`.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import write

ROOT = Path(__file__).resolve().parents[1]
REAL_DELAY_S = 86_400.0  # real streams: the label comes a day of event time later
SYNTHETIC_DELAY_ROWS = 100
MAX_PERIODIC_RETRAINS = 20
ESTIMATE_WINDOWS = (250, 500, 1_000)
ESTIMATE_DROPS = (0.03, 0.05, 0.10)


def one(name: str) -> dict[str, Any]:
    """Backtest one stream under the grid: its report, and the reference figures."""
    from threadpoolctl import threadpool_limits

    from driftloop import backtesting, streams
    from driftloop.backtest import Delay, recommend
    from driftloop.spec import read_specs

    started = time.perf_counter()
    stream = streams.stream(name)
    spec = read_specs(ROOT / "models").specs[stream.spec]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    rows = [(x, y, epoch + timedelta(seconds=t)) for x, y, t in stream.rows]
    history, _ = backtesting.encode(spec, rows, stream.drifts)
    delay = Delay(seconds=REAL_DELAY_S) if stream.kind == "real" else Delay(rows=SYNTHETIC_DELAY_ROWS)
    initial = min(spec.retrain.window_rows, len(history) // 4)
    with threadpool_limits(limits=1):
        results = backtesting.run(spec, history, delay, initial)
    chosen = recommend(results)
    report = backtesting.summary(results, history, delay, f"stream {name}", chosen, None, spec)
    by_name = {r.name: r for r in results}
    periodic = [r for r in results if r.name.startswith("periodic/") and r.retrains <= MAX_PERIODIC_RETRAINS]
    plain = [r for r in periodic if r.name.endswith("/plain")]
    report["kind"] = stream.kind
    report["description"] = stream.description
    report["references"] = {
        "never": by_name["never"].accuracy,
        "best_plain_periodic": max(plain, key=lambda r: r.accuracy).name if plain else None,
        "best_plain_periodic_accuracy": max((r.accuracy for r in plain), default=None),
        "best_periodic": max(periodic, key=lambda r: r.accuracy).name if periodic else None,
        "best_periodic_accuracy": max((r.accuracy for r in periodic), default=None),
        "spec": by_name["spec"].accuracy,
        "recommended": chosen.accuracy,
    }
    report["estimate_grid"] = [
        by_name["spec"].estimate_figures(window, drop, spec.estimate_floor)
        for window in ESTIMATE_WINDOWS
        for drop in ESTIMATE_DROPS
    ]
    report["wall_s"] = time.perf_counter() - started
    return report


def estimate_summary(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The estimate's figures per setting, summed (alarms, falls) or averaged (error) over streams."""
    rows = []
    for k, (window, drop) in enumerate((w, d) for w in ESTIMATE_WINDOWS for d in ESTIMATE_DROPS):
        for kind in ("real", "synthetic"):
            grid = [r["estimate_grid"][k] for r in reports if (r["kind"] == "real") == (kind == "real")]
            cells = [c for c in grid if c["rows"]]  # streams with a full window served by one version
            if not cells:
                continue
            totals = {key: sum(c[key] for c in cells) for key in ("alarms", "confirmed", "falls", "caught")}
            errors = [c["mean_abs_error"] for c in cells]
            rows.append(
                {"kind": kind, "window": window, "max_drop": drop, "streams": len(cells), **totals,
                 "mean_abs_error": sum(errors) / len(errors), "worst_abs_error": max(errors)}
            )  # fmt: skip
    return rows


def main() -> int:
    from driftloop import backtesting, streams

    names = [*streams.real_names(), *streams.synthetic_names()]
    if len(sys.argv) > 1:
        names = [n for n in names if n in sys.argv[1:]]
    started = time.perf_counter()
    for name in names:  # fetch the real data once, before the workers start
        streams.stream(name, n=10)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        reports = pool.map(one, names)
    summary = []
    for report in reports:
        refs = report["references"]
        late = report["label_delay"]
        print(f"\n== {report['source']} ({report['kind']}): {report['rows']} rows, labels {late} late")
        print(backtesting.table(report))
        plain, periodic = refs["best_plain_periodic_accuracy"], refs["best_periodic_accuracy"]
        summary.append(
            {
                "stream": report["source"].removeprefix("stream "),
                "kind": report["kind"],
                "rows": report["rows"],
                "never": refs["never"],
                "best_plain_periodic": plain,
                "best_periodic": periodic,
                "spec_default": refs["spec"],
                "recommended": report["recommended"],
                "recommended_accuracy": refs["recommended"],
                "spec_vs_never_points": 100 * (refs["spec"] - refs["never"]),
                "spec_vs_plain_periodic_points": None if plain is None else 100 * (refs["spec"] - plain),
                "spec_vs_periodic_points": None if periodic is None else 100 * (refs["spec"] - periodic),
            }
        )
    print("\nsummary: accuracy (prequential, labels late), best periodic with at most 20 retrains")
    head = ["never", "plain per.", "periodic", "default", "vs never", "vs plain", "vs per."]
    print(f"{'stream':20} " + " ".join(f"{h:>10}" for h in head) + "  recommended")
    for s in summary:
        figures = [s["never"], s["best_plain_periodic"], s["best_periodic"], s["spec_default"]]
        gains = [s["spec_vs_never_points"], s["spec_vs_plain_periodic_points"], s["spec_vs_periodic_points"]]
        print(
            f"{s['stream']:20} "
            + " ".join(f"{f:10.4f}" for f in figures)
            + " "
            + " ".join(f"{g:+10.2f}" for g in gains)
            + f"  {s['recommended']}"
        )
    estimates = estimate_summary(reports)
    print("\nthe accuracy estimated before labels (the spec's own policy), by window and floor below the")
    print("holdout accuracy: error against the labels on the same rows; alarms (confirmed); falls (caught)")
    for e in estimates:
        print(
            f"{e['kind']:10} window {e['window']:5d}  floor -{100 * e['max_drop']:.0f} pts  "
            f"error {100 * e['mean_abs_error']:5.2f} (worst {100 * e['worst_abs_error']:5.2f})  "
            f"alarms {e['alarms']:4d} ({e['confirmed']:4d})  falls {e['falls']:4d} ({e['caught']:4d})"
        )
    path = write(
        "learning",
        {
            "summary": summary,
            "estimates": estimates,
            "streams": reports,
            "wall_s": time.perf_counter() - started,
        },
    )
    print(f"\nwrote {path} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
