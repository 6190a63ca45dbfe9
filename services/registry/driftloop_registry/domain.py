"""Registry rules, pure: a version's status, rollback targets, model cards (the promotion gate is
`driftloop.gate`, which the backtest shares)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from driftloop.text import markdown


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
