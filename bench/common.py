"""Shared by the benchmarks: percentiles, a printed table, and the JSON result file."""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def p50(values: list[float]) -> float:
    return float(np.percentile(values, 50))


def table(title: str, rows: list[tuple[str, Any]]) -> str:
    width = max(len(name) for name, _ in rows)
    lines = [title, "-" * len(title)]
    for name, value in rows:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{name:<{width}}  {shown}")
    return "\n".join(lines)


def write(area: str, figures: dict[str, Any]) -> Path:
    """Write `bench/results/<area>.json` with the figures and where/when they were measured."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{area}.json"
    meta = {"measured_at": datetime.now(UTC).isoformat(), "machine": platform.platform()}
    path.write_text(json.dumps({**figures, "meta": meta}, indent=2) + "\n")
    return path
