"""Data sources for replay, demos and benchmarks: River's synthetic streams and CSV files, as
(features, label) rows. `synthetic(name, concept, seed)` names a stream and one of its concepts; an
abrupt drift chains two concepts (`abrupt`). `conform` shapes raw values to a model spec."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from river.datasets import synth

from driftloop.spec import ModelSpec

Row = tuple[dict[str, Any], Any]


def sea(variant: int, seed: int, noise: float = 0.1) -> Iterator[Row]:
    """An endless SEA stream (features x0..x2 in [0, 10], label 0/1) for one concept."""
    for x, y in synth.SEA(variant=variant, noise=noise, seed=seed):
        yield {f"x{k}": float(v) for k, v in x.items()}, int(y)


def _river(stream: Iterable[tuple[dict[str, Any], Any]]) -> Iterator[Row]:
    for x, y in stream:
        yield dict(x), int(y)


# name -> (concepts, factory(concept, seed)); every stream is endless, with a 0/1 label
SYNTHETIC: dict[str, tuple[range, Callable[[int, int], Iterator[Row]]]] = {
    "sea": (range(4), lambda concept, seed: sea(concept, seed)),
    "agrawal": (
        range(10),
        lambda concept, seed: _river(
            synth.Agrawal(classification_function=concept, seed=seed, perturbation=0.05)
        ),
    ),
    "stagger": (
        range(3),
        lambda concept, seed: _river(synth.STAGGER(classification_function=concept, seed=seed)),
    ),
}


def synthetic(name: str, concept: int, seed: int) -> Iterator[Row]:
    """An endless stream of one concept of a named synthetic dataset (sea, agrawal, stagger)."""
    if name not in SYNTHETIC:
        raise ValueError(f"unknown synthetic stream {name!r}; known: {', '.join(SYNTHETIC)}")
    concepts, factory = SYNTHETIC[name]
    if concept not in concepts:
        raise ValueError(f"{name} has concepts {concepts.start}..{concepts.stop - 1}, not {concept}")
    return factory(concept, seed)


def conform(spec: ModelSpec, rows: Iterable[Row]) -> Iterator[Row]:
    """Rows shaped like the spec: categorical values as strings, numeric ones as floats."""
    kinds = {f.name: f.type for f in spec.features}
    for x, y in rows:
        yield {k: (str(v) if kinds.get(k) == "categorical" else float(v)) for k, v in x.items()}, y


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
