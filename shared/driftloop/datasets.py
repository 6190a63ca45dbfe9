"""Data sources for replay and demos: River's synthetic streams and CSV files, as (features, label)."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from river.datasets import synth

Row = tuple[dict[str, Any], Any]


def sea(variant: int, seed: int, noise: float = 0.1) -> Iterator[Row]:
    """An endless SEA stream (features x0..x2 in [0, 10], label 0/1) for one concept."""
    for x, y in synth.SEA(variant=variant, noise=noise, seed=seed):
        yield {f"x{k}": float(v) for k, v in x.items()}, int(y)


def abrupt(first: Iterator[Row], second: Iterator[Row], at: int) -> Iterator[Row]:
    """`at` rows of one concept, then the other: an abrupt drift at a known position.

    Chaining two generators avoids River's ConceptDriftStream overflow for sharp drifts.
    """
    return itertools.chain(itertools.islice(first, at), second)


def csv_rows(path: Path, label: str | None) -> Iterator[Row]:
    """Rows of a CSV file; numeric-looking cells become floats; `label` names the label column."""
    with path.open(newline="", encoding="utf-8") as fh:
        for record in csv.DictReader(fh):
            values: dict[str, Any] = {}
            for key, cell in record.items():
                try:
                    values[key] = float(cell)
                except (TypeError, ValueError):
                    values[key] = cell
            target = values.pop(label) if label and label in values else None
            yield values, target
