"""`driftloop backtest`: read a labelled history, replay it under a grid of retraining policies
(`driftloop.backtest`), print a table per policy, write JSON and one plot, and recommend the best
policy within a retrain budget as spec sections ready to paste.

A history is a CSV or Parquet file (the spec's feature columns, its label column, an optional
event-time column), the offline store's rows of the model between two times (a directory: the
ingest service's store root), or a named stream (`driftloop.streams`). Rows are replayed in
event-time order; a file without a time column is taken in its own order, one second apart.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from driftloop.backtest import (
    Backtest,
    Delay,
    History,
    Result,
    grid,
    policy_changes,
    recommend,
    spec_sections,
)
from driftloop.datasets import CsvFile, CsvRow, DataError
from driftloop.spec import ModelSpec

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}


def parse_delay(text: str) -> Delay:
    """A label delay: a number of rows (`48`, `48rows`) or a duration of event time (`90s`, `12h`, `1d`).

    >>> parse_delay("48"), parse_delay("1d")
    (Delay(rows=48, seconds=None), Delay(rows=0, seconds=86400.0))
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(rows?|[smhdw])?\s*", text)
    if match is None:
        raise ValueError(f"not a delay: {text!r} (rows, e.g. 48, or a duration, e.g. 30m, 12h, 1d)")
    number, unit = match.groups()
    if unit is None or unit.startswith("row"):
        if not float(number).is_integer():
            raise ValueError(f"a delay in rows is a whole number, not {number}")
        return Delay(rows=int(float(number)))
    return Delay(seconds=float(number) * UNITS[unit])


def moment(value: Any) -> datetime:
    """An event time from a cell: ISO 8601 text (UTC unless it says), or seconds since the epoch."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).strip()
    try:
        return EPOCH + timedelta(seconds=float(text))
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DataError(f"event time {text!r:.40} is neither ISO 8601 nor seconds since the epoch") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Loaded:
    history: History
    source: str
    notes: list[str]


def encode(
    spec: ModelSpec, rows: Iterable[tuple[dict[str, Any], Any, datetime]], drifts: Sequence[int] = ()
) -> tuple[History, int]:
    """Rows as a `History`: encoded by the spec's features (time parts from the event time), sorted by
    event time; rows the spec refuses or without a label are left out (their count is returned)."""
    from driftloop.features import FeatureSet, time_parts

    feature_set = FeatureSet(spec)
    kept: list[tuple[datetime, int, dict[str, Any], Any]] = []
    for i, (features, label, at) in enumerate(rows):
        cls = None if label is None else spec.label_of(label)
        if cls is not None:
            kept.append((at, i, features | time_parts(spec, at) if spec.time_parts else features, cls))
    kept.sort(key=lambda r: (r[0], r[1]))
    X, valid, _ = feature_set.encode_many([features for _, _, features, _ in kept])
    ok = [kept[i] for i in valid]
    if drifts and len(ok) != len(kept):  # a named stream: drift positions must keep their meaning
        raise DataError(f"{len(kept) - len(ok)} rows of the stream do not fit the {spec.name} spec")
    history = History(X, [label for *_, label in ok], [at for at, *_ in ok], tuple(drifts))
    return history, len(kept) - len(ok)


def load(
    source: str,
    spec: ModelSpec,
    *,
    label: str | None = None,
    time_column: str | None = None,
    n: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Loaded:
    """The history `source` names (a named stream, a store directory, a Parquet or CSV file)."""
    if spec.aggregates:
        raise DataError(
            f"model {spec.name} has per-entity aggregates: the backtest does not compute them yet"
        )
    from driftloop import streams

    path = Path(source)
    notes: list[str] = []
    if source in streams.STREAMS and not path.exists():
        stream = streams.stream(source, n=n)
        if stream.spec != spec.name:
            raise DataError(f"stream {source} is for model {stream.spec}, not {spec.name} (--model)")
        rows = [(x, y, EPOCH + timedelta(seconds=t)) for x, y, t in stream.rows]
        history, _ = encode(spec, rows, stream.drifts)
        return Loaded(history, f"stream {source}: {stream.description}", notes)
    if path.is_dir():
        rows = list(_store_rows(path, spec, since, until))
        where = f"offline store {path} ({spec.name}"
        where += f", {since or 'start'} .. {until or 'end'})"
    elif path.suffix == ".parquet":
        rows = list(_parquet_rows(path, spec, label, time_column))
        where = f"{path}"
    else:
        rows = list(_csv_rows(path, spec, label, time_column, notes))
        where = f"{path}"
    if n is not None:
        rows = rows[:n]
    history, _ = encode(spec, rows)
    if len(history) < len(rows):
        notes.append(
            f"{len(rows) - len(history)} rows left out: no label, or refused by the {spec.name} spec"
        )
    if len(history) < 2 * spec.training.min_rows:
        raise DataError(
            f"{where}: {len(history)} usable rows; a backtest needs at least {2 * spec.training.min_rows}"
        )
    return Loaded(history, where, notes)


def _csv_rows(
    path: Path, spec: ModelSpec, label: str | None, time_column: str | None, notes: list[str]
) -> Iterable[tuple[dict[str, Any], Any, datetime]]:
    csv_file = CsvFile(path, spec, label, time_column=time_column)
    if not csv_file.labelled:
        raise DataError(f"{path}: no label column {csv_file.label!r} (--label)")
    if csv_file.time_column is None:
        notes.append("no event-time column: rows are taken in file order, one second apart")
    for i, row in enumerate(csv_file.rows()):
        if isinstance(row, CsvRow):
            at = moment(row.time) if row.time is not None else EPOCH + timedelta(seconds=i)
            yield row.features, row.label, at


def _parquet_rows(
    path: Path, spec: ModelSpec, label: str | None, time_column: str | None
) -> Iterable[tuple[dict[str, Any], Any, datetime]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    columns = set(table.column_names)
    label = label or spec.label.name
    time_column = time_column or ("event_time" if "event_time" in columns else None)
    for name in (label, time_column):
        if name is not None and name not in columns:
            raise DataError(f"{path}: no column {name!r} (columns: {', '.join(sorted(columns))})")
    names = [f.name for f in spec.features if f.name in columns]
    data = table.to_pydict()
    for i in range(table.num_rows):
        features = {k: data[k][i] for k in names if data[k][i] is not None}
        at = moment(data[time_column][i]) if time_column else EPOCH + timedelta(seconds=i)
        yield features, data[label][i], at


def _store_rows(
    root: Path, spec: ModelSpec, since: datetime | None, until: datetime | None
) -> Iterable[tuple[dict[str, Any], Any, datetime]]:
    import orjson

    from driftloop.store import RowStore

    for body in RowStore(root).window(spec.name, since, until):
        row = orjson.loads(body)
        yield row.get("features") or {}, row.get("label"), moment(row["event_time"])


# ---------------------------------------------------------------- the run and its report


def run(
    spec: ModelSpec,
    history: History,
    delay: Delay,
    initial: int,
    policies: dict[str, ModelSpec] | None = None,
    progress: Callable[[int, int, str, int], None] | None = None,
) -> list[Result]:
    """Every policy of the grid (or `policies`) over the history, reporting progress as
    (policy number, policies, name, row)."""
    chosen = policies or grid(spec, len(history) - initial)
    results = []
    for k, (name, policy_spec) in enumerate(chosen.items(), 1):
        tick = None if progress is None else (lambda row, k=k, name=name: progress(k, len(chosen), name, row))
        results.append(Backtest(policy_spec, history, delay, initial, name=name).run(tick))
    return results


def summary(
    results: Sequence[Result],
    history: History,
    delay: Delay,
    source: str,
    chosen: Result,
    max_retrains: int | None,
    spec: ModelSpec,
) -> dict[str, Any]:
    """The report as JSON-ready data."""
    window = max(1, (len(history) - results[0].start) // 20)
    never = next((r for r in results if r.name == "never"), None)
    return {
        "source": source,
        "rows": len(history),
        "initial_rows": results[0].start,
        "label_delay": str(delay),
        "known_drifts": list(history.drifts),
        "window_rows": window,
        "max_retrains": max_retrains,
        "recommended": chosen.name,
        "recommended_changes": policy_changes(chosen.spec, spec),
        "estimate": estimate(chosen),
        "policies": [
            {
                "name": r.name,
                "accuracy": r.accuracy,
                "log_loss": r.log_loss,
                "vs_never": None if never is None else r.accuracy - never.accuracy,
                "retrains": r.retrains,
                "promotions": r.promotions,
                "train_cpu_s": r.train_cpu_s,
                "replay_cpu_s": r.replay_cpu_s,
                "detections": [d.row for d in r.detections],
                "accuracy_per_window": r.windows(window),
                "trainings": [t.__dict__ for t in r.trainings],
                **(r.drift_figures(history.drifts) if history.drifts else {}),
            }
            for r in results
        ],
    }


def estimate(result: Result) -> dict[str, Any]:
    """How the accuracy estimated before labels would have tracked under `result`'s policy, with
    its spec's `drift.estimate` settings (`Result.estimate_figures`)."""
    settings = result.spec.drift.estimate
    return result.estimate_figures(settings.window, settings.max_drop, result.spec.estimate_floor)


def estimate_line(figures: dict[str, Any]) -> str:
    """The estimate's figures in a sentence."""
    if not figures.get("rows") or figures["mean_abs_error"] is None:
        return f"estimated accuracy: no full window of {figures['window']} rows served by one version"
    return (
        f"estimated accuracy before labels (windows of {figures['window']} rows): off by "
        f"{100 * figures['mean_abs_error']:.2f} points on average (bias {100 * figures['bias']:+.2f}); "
        f"{figures['alarms']} alarms below the floor, {figures['confirmed']} confirmed by the labels; "
        f"{figures['caught']} of {figures['falls']} falls the labels showed were caught"
    )


def table(report: dict[str, Any]) -> str:
    """The report's policies, best first, as a text table."""
    drifts = bool(report["known_drifts"])
    head = f"{'policy':34} {'accuracy':>8} {'vs never':>8} {'worst win':>9} {'retrains':>8} {'promoted':>8}"
    head += f" {'train s':>8}"
    head += f" {'delays':>16} {'false':>5} {'stale':>6}" if drifts else ""
    lines = [head]
    for p in sorted(report["policies"], key=lambda p: -p["accuracy"]):
        vs = "" if p["vs_never"] is None else f"{100 * p['vs_never']:+.2f}"
        mark = " *" if p["name"] == report["recommended"] else ""
        line = (
            f"{p['name'][:34]:34} {p['accuracy']:8.4f} {vs:>8} {min(p['accuracy_per_window']):9.4f} "
            f"{p['retrains']:8d} {p['promotions']:8d} {p['train_cpu_s']:8.1f}"
        )
        if drifts:
            delays = ",".join("-" if d is None else str(d) for d in p["detection_delays"])
            line += f" {delays[:16]:>16} {p['false_alarms']:5d} {p['stale_rows']:6d}"
        lines.append(line + mark)
    return "\n".join(lines)


def plot(results: Sequence[Result], history: History, path: Path, chosen: Result) -> None:
    """Rolling accuracy of each policy, retrains marked, known drifts as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = max(50, (len(history) - results[0].start) // 40)
    fig, ax = plt.subplots(figsize=(12, 5.5))
    shown = sorted(results, key=lambda r: -r.accuracy)[:6]
    for r in [*shown, *[r for r in results if r.name == "never" and r not in shown]]:
        xs = np.arange(r.start, r.start + len(r.correct))
        rolling = r.rolling(window)
        width = 2.2 if r is chosen else 1.0
        (line,) = ax.plot(xs, rolling, lw=width, label=f"{r.name} ({r.accuracy:.3f}, {r.retrains} retrains)")
        marks = [t.row for t in r.trainings if t.blessed]
        ax.plot(
            marks,
            rolling[np.asarray(marks, dtype=int) - r.start] if marks else [],
            "|",
            ms=10,
            color=line.get_color(),
        )
    for onset in history.drifts:
        ax.axvline(onset, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("row (event-time order)")
    ax.set_ylabel(f"rolling accuracy ({window} rows)")
    ax.set_title("backtest: the best policies and never retraining (| a promoted retrain)")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def progress_bar(stream: Any, rows: int) -> Callable[[int, int, str, int], None] | None:
    """A one-line progress bar on a terminal (None elsewhere)."""
    if not stream.isatty():
        return None

    def show(k: int, of: int, name: str, row: int) -> None:
        done = (k - 1 + row / max(1, rows)) / of
        bar = "#" * int(30 * done)
        stream.write(f"\r[{bar:30}] {k}/{of} {name[:30]:30} row {row:>8}")
        stream.flush()

    return show


def main(
    spec: ModelSpec,
    loaded: Loaded,
    delay: Delay,
    initial: int | None,
    out: Path,
    max_retrains: int | None,
    policies: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run the backtest, print the table and the recommendation, write `backtest.json` and
    `backtest.png` under `out`; the report."""
    history = loaded.history
    start = initial if initial is not None else min(spec.retrain.window_rows, len(history) // 4)
    if not spec.training.min_rows <= start < len(history):
        raise DataError(
            f"--initial {start}: must be between training.min_rows ({spec.training.min_rows}) "
            f"and the number of rows ({len(history)})"
        )
    everything = grid(spec, len(history) - start)
    unknown = [p for p in policies or () if p not in everything]
    if unknown:
        raise DataError(f"unknown policies {', '.join(unknown)}; known: {', '.join(everything)}")
    chosen_policies = {k: v for k, v in everything.items() if not policies or k in policies}
    wall = time.perf_counter()
    results = run(spec, history, delay, start, chosen_policies, progress_bar(sys.stderr, len(history)))
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    chosen = recommend(results, max_retrains)
    report = summary(results, history, delay, loaded.source, chosen, max_retrains, spec)
    out.mkdir(parents=True, exist_ok=True)
    (out / "backtest.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    plot(results, history, out / "backtest.png", chosen)
    train = sum(r.train_cpu_s for r in results)
    replay = sum(r.replay_cpu_s for r in results)
    print(
        f"{loaded.source}: {len(history)} rows, the first {start} train the first champion; "
        f"labels {delay} late"
    )
    for note in loaded.notes:
        print(f"note: {note}")
    print(table(report))
    budget = "" if max_retrains is None else f" within {max_retrains} retrains"
    print(f"\nrecommended{budget}: {chosen.name} (accuracy {chosen.accuracy:.4f}); in the spec:\n")
    print(spec_sections(chosen.spec, spec))
    print(estimate_line(report["estimate"]))
    print(
        f"CPU: training {train:.1f} s, replay {replay:.1f} s ({replay / max(1e-9, train + replay):.0%}); "
        f"wall {time.perf_counter() - wall:.1f} s. Wrote {out / 'backtest.json'} and {out / 'backtest.png'}"
    )
    if not math.isfinite(chosen.accuracy):
        raise DataError("no row was served: the history is shorter than --initial")
    return report
