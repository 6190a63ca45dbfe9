"""What the console's pages show, from the registry's records (`ModelVersion.record` with its
status): a model's timeline, the gate chart, a version's lineage, two versions side by side. Pure:
no I/O, no HTML (the templates place these; Jinja escapes every value)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# who or what asked for a training run, by the `TrainModel` reason
ASKED_BY = {
    "bootstrap": "first model",
    "drift": "drift detected",
    "periodic": "schedule",
    "retry": "retry of a rejected run",
    "below_floor": "live accuracy below the floor",
    "manual": "operator command",
}
EVENTS = {
    "ModelPromoted": "promoted",
    "ModelRolledBack": "rolled back to",
    "ModelRejected": "rejected",
    "ModelAwaitingApproval": "awaiting approval",
    "ModelTagged": "tagged",
    "ModelCommandRefused": "command refused",
}
DRIFT_STATES = {0: "watching", 1: "warming up", 2: "warning", 3: "drift: retraining"}
LOWER_IS_BETTER = {"log_loss"}


def asked_by(reason: str) -> str:
    """Who or what asked for a run (its `TrainModel` reason in words; an unknown one as it is)."""
    return ASKED_BY.get(reason, reason)


@dataclass(frozen=True)
class Entry:
    """One line of a model's timeline."""

    at: str  # ISO 8601, UTC
    version: int
    what: str  # trained, promoted, rejected, ...
    reason: str
    asked_by: str
    command_id: str | None


def timeline(records: Sequence[Mapping[str, Any]]) -> list[Entry]:
    """Every version's training run and lifecycle events, newest first. A command an operator sent
    says so; the rest are asked for by what asked for the version's training run."""
    entries = []
    for record in records:
        trained, version = record["trained"], record["version"]
        run_by = asked_by(trained["reason"])
        entries.append(Entry(trained["trained_at"], version, "trained", trained["reason"], run_by,
                             trained["command_id"]))  # fmt: skip
        for event in record["events"]:
            reason = event.get("reason") or ""
            by = "operator command" if " by operator" in reason else run_by
            what = EVENTS.get(event.get("event", ""), event.get("event", ""))
            entries.append(Entry(event["at"], version, what, reason, by, event.get("command_id")))
    return sorted(entries, key=lambda e: (e.at, e.version), reverse=True)


@dataclass(frozen=True)
class Bar:
    """A candidate's gate metric (and the champion's on the same holdout) placed on the chart."""

    version: int
    value: float
    champion: float | None
    champion_version: int | None
    blessed: bool
    x: float  # left edge
    y: float  # top of the candidate's bar
    height: float
    champion_y: float | None  # the champion's mark, on the same scale


@dataclass(frozen=True)
class Chart:
    metric: str
    lower_is_better: bool
    bars: list[Bar]
    width: float
    height: float
    bar_width: float
    low: float  # the value at the bottom of the plot
    high: float  # and at its top
    ticks: list[tuple[float, float]]  # (value, y)


PLOT_HEIGHT, BAR_WIDTH, GAP, MARGIN, TOP = 160.0, 22.0, 10.0, 44.0, 10.0


def gate_chart(records: Sequence[Mapping[str, Any]]) -> Chart | None:
    """Each candidate's gate metric beside the champion's on the same holdout, oldest first, on
    one scale (None when no version has its metric)."""
    points = []
    for record in sorted(records, key=lambda r: r["version"]):
        trained = record["trained"]
        metric = trained["metric"]
        value = trained["candidate_metrics"].get(metric)
        if value is None:
            continue
        champion = (trained.get("champion_metrics") or {}).get(metric)
        points.append((record["version"], metric, value, champion, trained.get("champion_version"),
                       bool(record["blessed"])))  # fmt: skip
    if not points:
        return None
    metric = points[-1][1]  # the newest version's; versions judged on another metric are left out
    points = [p for p in points if p[1] == metric]
    values = [p[2] for p in points] + [p[3] for p in points if p[3] is not None]
    low, high = min(values), max(values)
    span = max(high - low, 0.02)
    low, high = max(0.0, low - span * 0.25), high + span * 0.1
    scale = PLOT_HEIGHT / (high - low)

    def y_of(v: float) -> float:
        return round(TOP + PLOT_HEIGHT - (v - low) * scale, 2)

    bars = [
        Bar(
            version,
            value,
            champion,
            champion_version,
            blessed,
            MARGIN + k * (BAR_WIDTH + GAP),
            y_of(value),
            round(TOP + PLOT_HEIGHT - y_of(value), 2),
            None if champion is None else y_of(champion),
        )
        for k, (version, _, value, champion, champion_version, blessed) in enumerate(points)
    ]
    ticks = [(round(low + (high - low) * i / 4, 4), y_of(low + (high - low) * i / 4)) for i in range(5)]
    width = max(240.0, MARGIN + len(bars) * (BAR_WIDTH + GAP) + GAP)
    return Chart(
        metric, metric in LOWER_IS_BETTER, bars, width, TOP + PLOT_HEIGHT + 30, BAR_WIDTH, low, high, ticks
    )


@dataclass(frozen=True)
class Step:
    """One link of a version's lineage: what it is, its identity, and the facts that pin it."""

    kind: str  # data, features, training run, artifact, promotion
    name: str
    facts: list[tuple[str, str]]
    page: str | None = None  # its own page, under the version's


def lineage(record: Mapping[str, Any]) -> list[Step]:
    """Data → features spec → training run → artifact → the events that put it in service."""
    trained = record["trained"]
    dataset, artifact = trained["dataset"], trained["artifact"]
    steps = [
        Step("data", f"dataset {dataset['version']}", [
            ("rows", f"{dataset['rows']:,} ({dataset['train_rows']:,} fitted, "
                     f"{dataset['holdout_rows']:,} held out)"),
            ("event time", f"{dataset['first_event_time']} .. {dataset['last_event_time']}"),
            ("window", f"since {dataset['since'] or 'the start'}, until {dataset['until'] or 'the end'}, "
                       f"newest {dataset['last_n']:,}, store rows up to #{dataset['max_seq']:,}"),
            ("sha256", dataset["sha256"]),
            ("files", f"{len(dataset.get('files') or [])} store files"),
        ], page="data"),
        Step("features", f"spec {trained.get('spec_version') or 'not recorded'}", [
            ("inputs", ", ".join(trained["feature_names"])),
            ("classes", ", ".join(map(str, trained["classes"]))),
        ]),
        Step("training run", trained["run_id"], [
            ("asked by", f"{asked_by(trained['reason'])} (command {trained['command_id']})"),
            ("algorithm", trained["algorithm"]),
            ("trained at", trained["trained_at"]),
            ("code version", trained["code_version"]),
        ]),
        Step("artifact", f"sha256 {artifact['sha256'][:16]}", [
            ("uri", artifact["uri"]),
            ("size", f"{artifact['size_bytes']:,} bytes"),
            ("sha256", artifact["sha256"]),
            ("ONNX parity", f"max |p_onnx - p_sklearn| = {trained['parity_max_abs_diff']:.2e}"),
        ]),
    ]  # fmt: skip
    for event in record["events"]:
        if event.get("event") in ("ModelPromoted", "ModelRolledBack", "ModelAwaitingApproval"):
            steps.append(Step(EVENTS[event["event"]], event["at"], [("reason", event.get("reason") or "")]))
    return steps


@dataclass(frozen=True)
class Row:
    """A line of the compare view."""

    label: str
    a: str
    b: str

    @property
    def differs(self) -> bool:
        return self.a != self.b


def _figure(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Row]:
    """Two versions side by side: status, gate, metrics, data, parameters, importance."""
    ta, tb = a["trained"], b["trained"]
    rows = [
        Row("status", a["status"], b["status"]),
        Row("gate", a["decision"], b["decision"]),
        Row("asked by", asked_by(ta["reason"]), asked_by(tb["reason"])),
        Row("algorithm", ta["algorithm"], tb["algorithm"]),
        Row("spec version", _figure(ta.get("spec_version")), _figure(tb.get("spec_version"))),
        Row("trained at", ta["trained_at"], tb["trained_at"]),
    ]
    for name in sorted(set(ta["candidate_metrics"]) | set(tb["candidate_metrics"])):
        rows.append(Row(f"holdout {name}", _figure(ta["candidate_metrics"].get(name)),
                        _figure(tb["candidate_metrics"].get(name))))  # fmt: skip
    da, db = ta["dataset"], tb["dataset"]
    rows += [
        Row("dataset", da["version"], db["version"]),
        Row("rows", f"{da['rows']:,}", f"{db['rows']:,}"),
        Row("event time", f"{da['first_event_time']} .. {da['last_event_time']}",
            f"{db['first_event_time']} .. {db['last_event_time']}"),
        Row("ONNX parity", f"{ta['parity_max_abs_diff']:.2e}", f"{tb['parity_max_abs_diff']:.2e}"),
        Row("artifact sha256", ta["artifact"]["sha256"], tb["artifact"]["sha256"]),
    ]  # fmt: skip
    for name in sorted(set(ta["params"]) | set(tb["params"])):
        rows.append(Row(f"param {name}", _figure(ta["params"].get(name)), _figure(tb["params"].get(name))))
    ia, ib = ta.get("importance") or {}, tb.get("importance") or {}
    for name in sorted(set(ia) | set(ib)):
        rows.append(Row(f"importance {name}", _figure(ia.get(name)), _figure(ib.get(name))))
    tags = sorted(set(a["tags"]) | set(b["tags"]))
    rows += [Row(f"tag {k}", a["tags"].get(k, "—"), b["tags"].get(k, "—")) for k in tags]
    return rows


@dataclass(frozen=True)
class Overview:
    """A model on the console's front page."""

    model: str
    declared: bool
    versions: int
    champion: int | None
    challenger: int | None
    spec_version: str | None
    last_run: Entry | None  # the newest training run
    accuracy: float | None  # realised, over the monitor's window (labels)
    estimated: float | None  # before labels
    drift: str | None


def overview(
    model: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    specs: Sequence[Mapping[str, Any]],
    live: Mapping[str, Mapping[str, float]],
) -> Overview:
    """A model's line: aliases, spec in force, the newest run, and the live figures (`live`:
    Prometheus' `accuracy`, `estimated` and `drift_state` by model, of the champion)."""
    aliases = model["aliases"]
    runs = [e for e in timeline(records) if e.what == "trained"]
    in_force = next((s.get("version") for s in specs if s.get("in_force")), None)
    name = model["model"]
    state = live.get("drift_state", {}).get(name)
    state = state if state is not None and math.isfinite(state) else None
    return Overview(
        name,
        model["declared"],
        model["versions"],
        aliases.get("champion"),
        aliases.get("challenger"),
        in_force,
        runs[0] if runs else None,
        live.get("accuracy", {}).get(name),
        live.get("estimated", {}).get(name),
        None if state is None else DRIFT_STATES.get(int(state), str(state)),
    )


@dataclass(frozen=True)
class Column:
    """A bar of a histogram or of a share chart, placed in a box of the given size."""

    label: str
    value: float  # the count or share it stands for
    x: float
    y: float
    width: float
    height: float


def histogram(
    edges: Sequence[float], counts: Sequence[int], width: float = 300, height: float = 80
) -> list[Column]:
    """A numeric input's histogram as columns (the tallest fills the height)."""
    top = max(counts, default=0) or 1
    step = width / max(1, len(counts))
    return [
        Column(
            f"{edges[k]:.4g} to {edges[k + 1]:.4g}",
            count,
            round(k * step, 2),
            round(height - height * count / top, 2),
            round(max(step - 1, 1), 2),
            round(height * count / top, 2),
        )
        for k, count in enumerate(counts)
    ]


def shares(values: Mapping[str, float], width: float = 300, row: float = 18) -> list[Column]:
    """Category (or label) shares as horizontal bars, largest first (the largest fills the width)."""
    top = max(values.values(), default=0) or 1
    ordered = sorted(values.items(), key=lambda kv: -kv[1])
    return [
        Column(name, share, 0, k * row, round(width * share / top, 2), row - 4)
        for k, (name, share) in enumerate(ordered)
    ]


def shift_level(psi: float | None) -> str:
    """PSI in words, by the usual rule of thumb (the monitor's covariate threshold is 0.25)."""
    if psi is None:
        return "no champion to compare with"
    return "stable" if psi < 0.1 else "moderate shift" if psi < 0.25 else "shifted"
