"""The registry's domain, pure: the `ModelVersion` aggregate (a version's gate verdict, tags and
recorded lifecycle events, and the rules that change them), the repository port it is stored
through, rollback targets and model cards (the promotion gate is `driftloop.gate`, which the
backtest shares)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from driftloop.contracts import (
    LIFECYCLE,
    LifecycleEvent,
    ModelAwaitingApproval,
    ModelPromoted,
    ModelRolledBack,
    ModelTagged,
    ModelTrained,
)
from driftloop.text import markdown


class Refused(Exception):
    """A command that cannot be carried out; the reason goes back as `ModelCommandRefused`."""


def status(version: int, blessed: bool, aliases: Mapping[str, int], history: Sequence[int]) -> str:
    """What a version is now: champion, challenger, rejected, archived (served before) or candidate."""
    if aliases.get("champion") == version:
        return "champion"
    if aliases.get("challenger") == version:
        return "challenger"
    if not blessed:
        return "rejected"
    return "archived" if version in history else "candidate"


def rollback_target(history: Sequence[int], current: int | None) -> int | None:
    """The champion before the current one (the newest earlier entry that is not it)."""
    for version in reversed(history):
        if version != current:
            return version
    return None


PLACED_BY = {"champion": ("ModelPromoted", "ModelRolledBack"), "challenger": ("ModelAwaitingApproval",)}


def placing_event(events: Sequence[Mapping[str, Any]], alias: str) -> Mapping[str, Any] | None:
    """The latest of a version's recorded events that put it in `alias` (champion: promoted or
    rolled back to; challenger: awaiting approval), or None.

    >>> placing_event([{"event": "ModelPromoted", "version": 2}, {"event": "ModelTagged"},
    ...                {"event": "ModelRolledBack", "version": 2}], "champion")["event"]
    'ModelRolledBack'
    >>> placing_event([{"event": "ModelPromoted"}], "challenger") is None
    True
    """
    return next((e for e in reversed(events) if e.get("event") in PLACED_BY[alias]), None)


@dataclass
class ModelVersion:
    """A registered version of a model: the training run behind it, the gate's verdict, its tags
    and every lifecycle event recorded on it. Its methods decide; the handlers store and publish.
    Stored as the JSON `record` (the layout of the registry's store and of model cards)."""

    version: int
    trained: ModelTrained
    blessed: bool
    decision: str
    tags: dict[str, str] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.trained.model

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ModelVersion:
        return cls(
            version=record["version"],
            trained=ModelTrained.model_validate(record["trained"]),
            blessed=record["blessed"],
            decision=record["decision"],
            tags=dict(record["tags"]),
            events=list(record["events"]),
        )

    def record(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "blessed": self.blessed,
            "decision": self.decision,
            "trained": self.trained.model_dump(mode="json"),
            "tags": dict(self.tags),
            "events": list(self.events),
        }

    def status(self, aliases: Mapping[str, int], history: Sequence[int]) -> str:
        return status(self.version, self.blessed, aliases, history)

    def servable(self) -> None:
        """`Refused` unless the version passed the gate."""
        if not self.blessed:
            raise Refused(f"v{self.version} failed the gate and cannot serve: {self.decision}")

    def serve(
        self,
        kind: type[ModelPromoted] | type[ModelRolledBack],
        reason: str,
        command_id: str | None,
        previous: int | None,
    ) -> ModelPromoted | ModelRolledBack:
        """The event that makes this version champion; `Refused` if it failed the gate."""
        self.servable()
        trained = self.trained
        return kind(
            **self._placed(reason, command_id, previous),
            prediction_shares=trained.prediction_shares,
            data_until=trained.dataset.last_event_time,
        )

    def await_approval(
        self, reason: str, command_id: str | None, previous: int | None
    ) -> ModelAwaitingApproval:
        """The event that makes this blessed version the challenger, waiting for approval."""
        return ModelAwaitingApproval(**self._placed(reason, command_id, previous))

    def _placed(self, reason: str, command_id: str | None, previous: int | None) -> dict[str, Any]:
        """What every event that puts this version in service carries: what followers load."""
        trained = self.trained
        return {
            "model": trained.model,
            "version": self.version,
            "artifact": trained.artifact,
            "spec_version": trained.spec_version,
            "classes": trained.classes,
            "feature_names": trained.feature_names,
            "calibration": trained.calibration,
            "reference_stats": trained.reference_stats,
            "previous_version": previous,
            "reason": reason,
            "command_id": command_id,
        }

    def retag(self, tags: Mapping[str, str], reason: str, command_id: str | None) -> ModelTagged:
        """Set tags (an empty value removes one)."""
        merged = {**self.tags, **tags}
        self.tags = {k: v for k, v in merged.items() if v}
        return ModelTagged(
            model=self.model, version=self.version, reason=reason, tags=self.tags, command_id=command_id
        )

    def recorded(self, event: LifecycleEvent) -> None:
        """Record an event on this version (its history, and what `announce` publishes again)."""
        self.events.append(event.model_dump(mode="json"))

    def placing(self, alias: str) -> LifecycleEvent | None:
        """The recorded event that last put this version in `alias`, as a contract."""
        event = placing_event(self.events, alias)
        return None if event is None else LIFECYCLE.validate_python(event)

    def first_event(self) -> LifecycleEvent | None:
        """The decision recorded when it was registered (a repeated run announces it again)."""
        return LIFECYCLE.validate_python(self.events[0]) if self.events else None


class RegistryRepository(Protocol):
    """Where versions, aliases, the champion history and command outcomes are kept (Redis in the
    service, `InMemoryRegistryRepository` in unit tests)."""

    async def reserve_version(self, model: str, run_id: str) -> int:
        """The version number of a training run: the same every time the run is registered again."""
        ...

    async def save(self, version: ModelVersion) -> None: ...

    async def get(self, model: str, version: int) -> ModelVersion | None: ...

    async def versions(self, model: str) -> list[ModelVersion]:
        """Oldest first."""
        ...

    async def numbers(self, model: str) -> list[int]:
        """The model's version numbers, ascending (without reading the versions)."""
        ...

    async def set_alias(self, model: str, alias: str, version: int | None) -> None: ...

    async def aliases(self, model: str) -> dict[str, int]: ...

    async def push_champion(self, model: str, version: int) -> None:
        """Append to the champion history, not twice in a row."""
        ...

    async def champion_history(self, model: str) -> list[int]: ...

    async def models(self) -> list[str]: ...

    async def command_outcome(self, command_id: str) -> dict[str, Any] | None: ...

    async def save_command_outcome(self, command_id: str, event: dict[str, Any]) -> None: ...

    async def keep_spec_event(self, model: str, key: str, event: dict[str, Any]) -> None:
        """Keep a spec event of `models.specs` (a version applied, a retirement) under its key,
        once: kept again, it changes nothing."""
        ...

    async def spec_events(self, model: str) -> list[dict[str, Any]]:
        """The model's spec events, oldest first."""
        ...


def _importance_lines(importance: Mapping[str, float]) -> list[str]:
    """The card's feature importance section, most relied-on input first.

    >>> print("\\n".join(_importance_lines({"x2": 0.0, "x0": 0.21})))
    <BLANKLINE>
    ## Feature importance (accuracy lost on the holdout when the input is shuffled)
    <BLANKLINE>
    | input | importance |
    |---|---|
    | x0 | 0.2100 |
    | x2 | 0.0000 |
    """
    if not importance:
        return []
    ranked = sorted(importance.items(), key=lambda item: (-item[1], item[0]))
    return [
        "",
        "## Feature importance (accuracy lost on the holdout when the input is shuffled)",
        "",
        "| input | importance |",
        "|---|---|",
        *[f"| {markdown(name)} | {value:.4f} |" for name, value in ranked],
    ]


def _calibration_lines(table: Mapping[str, Any] | None) -> list[str]:
    """The card's calibration section: holdout accuracy per range of top-class probability (what the
    monitor's estimate before labels applies), or nothing for a version trained without one.

    >>> print("\\n".join(_calibration_lines({"edges": [0.7], "accuracy": [0.61, 0.93], "rows": 600})))
    <BLANKLINE>
    ## Calibration (600 holdout rows)
    <BLANKLINE>
    | top-class probability | holdout accuracy |
    |---|---|
    | below 0.700 | 0.610 |
    | 0.700 and above | 0.930 |
    """
    if not table:
        return []
    edges, accuracy = table["edges"], table["accuracy"]
    ranges = [
        "all" if not edges else
        f"below {edges[0]:.3f}" if i == 0 else
        f"{edges[-1]:.3f} and above" if i == len(edges) else
        f"{edges[i - 1]:.3f} to {edges[i]:.3f}"
        for i in range(len(accuracy))
    ]  # fmt: skip
    return [
        "",
        f"## Calibration ({table['rows']} holdout rows)",
        "",
        "| top-class probability | holdout accuracy |",
        "|---|---|",
        *[f"| {r} | {a:.3f} |" for r, a in zip(ranges, accuracy, strict=True)],
    ]


def render_card(record: Mapping[str, Any], state: str) -> str:
    """A model card in Markdown: decision, metrics against the champion, data, lineage, history.
    Text that comes from outside the code (reasons, tags, command ids, decisions, parameters) is
    escaped (`driftloop.text.markdown`): it cannot break a line, the table or a code span."""
    trained = record["trained"]
    dataset = trained["dataset"]
    champion = trained.get("champion_metrics") or {}
    tags = ", ".join(f"{markdown(k)}={markdown(v)}" for k, v in sorted(record["tags"].items()))
    lines = [
        f"# Model card: {markdown(trained['model'])} v{record['version']}",
        "",
        f"- **Status:** {state}",
        f"- **Gate:** {'passed' if record['blessed'] else 'failed'} — {markdown(record['decision'])}",
        f"- **Trained because:** {markdown(trained['reason'])} (command {markdown(trained['command_id'])})",
        f"- **Algorithm:** {trained['algorithm']}",
        f"- **Artifact:** `{trained['artifact']['uri']}` ({trained['artifact']['size_bytes']} bytes, "
        f"sha256 `{trained['artifact']['sha256']}`)",
        f"- **ONNX parity:** max |p_onnx - p_sklearn| = {trained['parity_max_abs_diff']:.2e}",
        f"- **Code version:** {markdown(trained['code_version'])}",
        f"- **Spec version:** {markdown(trained.get('spec_version') or 'not recorded')}",
        f"- **Tags:** {tags or 'none'}",
        "",
        f"## Metrics on the holdout ({dataset['holdout_rows']} newest rows)",
        "",
        f"| metric | candidate | champion v{trained.get('champion_version') or '-'} |",
        "|---|---|---|",
        *[
            f"| {markdown(name)} | {value:.4f} | {champion[name]:.4f} |"
            if name in champion
            else f"| {markdown(name)} | {value:.4f} | - |"
            for name, value in sorted(trained["candidate_metrics"].items())
        ],
        "",
        "## Data",
        "",
        f"- Dataset version `{dataset['version']}` (sha256 `{dataset['sha256']}`): {dataset['rows']} rows, "
        f"{dataset['train_rows']} for fitting, {dataset['holdout_rows']} held out",
        f"- Event time {dataset['first_event_time']} .. {dataset['last_event_time']}",
        f"- Window: since {dataset['since']}, until {dataset['until']}, newest {dataset['last_n']}, "
        f"store rows up to #{dataset['max_seq']}",
        f"- Features: {markdown(', '.join(trained['feature_names']))}; "
        f"classes {markdown(str(trained['classes']))}",
        *_calibration_lines(trained.get("calibration")),
        *_importance_lines(trained.get("importance") or {}),
        "",
        "## Parameters",
        "",
        *[f"- {markdown(k)} = {markdown(str(v))}" for k, v in sorted(trained["params"].items())],
        "",
        "## Durations (s)",
        "",
        *[f"- {markdown(k)}: {v:.3f}" for k, v in trained["durations_s"].items()],
        "",
        "## History",
        "",
        *[f"- {e['at']} {markdown(e['event'])}: {markdown(e['reason'])}" for e in record["events"]],
    ]
    return "\n".join(lines) + "\n"
