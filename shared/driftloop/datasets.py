"""Data sources for replay, demos and benchmarks: River's synthetic streams and CSV files, as
(features, label) rows. `synthetic(name, concept, seed)` names a stream and one of its concepts; an
abrupt drift chains two concepts (`abrupt`). `conform` shapes raw values to a model spec; `CsvFile`
reads a CSV file against one. Imports nothing heavy until a stream is read (the CLI's help is fast).

CSV rules (`CsvFile`): UTF-8, with or without a byte-order mark, any line ending; the first row
names the columns. A spec feature's column is converted by the feature's type: numeric cells with
`float` (text that is no number is sent as it is, for the platform to refuse), categorical cells
kept as the exact string (`01` stays `01`). An empty cell is a missing value: the spec's default
applies, or the platform refuses a required feature. `nan` and `inf` are refused with their line:
JSON has no such number, and sending one as null would let the default stand in silently. A row
with more or fewer cells than the header is refused with its line. Columns that are neither a spec
feature nor the label are not sent (the platform reads only the spec's features). The label column
(the spec's `label.name` unless given) is mapped to the spec's classes (`1`, `1.0` -> 1); a value
that is none of them is sent as it is and refused by the platform; an empty one leaves the row
unlabelled.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import ModuleType

    from driftloop.contracts import FeatureValue, Label
    from driftloop.spec import FeatureSpec, ModelSpec

Row = tuple[dict[str, Any], Any]


class DataError(ValueError):
    """Data that cannot be replayed at all: an unknown stream or concept, a file missing or
    unreadable, a header that cannot match the model spec. A bad row is `Refused` instead."""


def _synth() -> ModuleType:
    from river.datasets import synth  # ~2 s of imports: only when a stream is read

    return synth


def sea(variant: int, seed: int, noise: float = 0.1) -> Iterator[Row]:
    """An endless SEA stream (features x0..x2 in [0, 10], label 0/1) for one concept."""
    for x, y in _synth().SEA(variant=variant, noise=noise, seed=seed):
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
            _synth().Agrawal(classification_function=concept, seed=seed, perturbation=0.05)
        ),
    ),
    "stagger": (
        range(3),
        lambda concept, seed: _river(_synth().STAGGER(classification_function=concept, seed=seed)),
    ),
}


def synthetic(name: str, concept: int, seed: int) -> Iterator[Row]:
    """An endless stream of one concept of a named synthetic dataset (sea, agrawal, stagger)."""
    if name not in SYNTHETIC:
        raise DataError(f"unknown synthetic stream {name!r}; known: {', '.join(SYNTHETIC)}")
    concepts, factory = SYNTHETIC[name]
    if concept not in concepts:
        raise DataError(f"{name} has concepts {concepts.start}..{concepts.stop - 1}, not {concept}")
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


@dataclass(frozen=True, slots=True)
class CsvRow:
    """A CSV row as an observation's values: features by name, the label mapped to the spec."""

    line: int
    features: dict[str, FeatureValue]
    label: Label | None
    time: str | None = None  # the event-time cell, when the file has the column asked for


@dataclass(frozen=True, slots=True)
class Refused:
    """A CSV row that is not sent, and why (`reason` is machine-readable)."""

    line: int
    reason: str
    detail: str


def cell_value(feature: FeatureSpec, text: str) -> float | str | None:
    """A cell's value for a feature: None when empty (missing); numeric features as floats (text
    that is no number stays text); categorical ones as the exact string. `ValueError` for a
    number that is not finite (nan, inf)."""
    if not text.strip():
        return None
    if feature.type == "categorical":
        return text
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        raise ValueError(f"{feature.name} is {text.strip()!r}, not a finite number (empty if missing)")
    return number


def label_value(spec: ModelSpec, text: str) -> Label | None:
    """A label cell as the spec's class (`1` and `1.0` are class 1); None when empty; the text
    itself when it is none of the classes (the platform refuses it)."""
    text = text.strip()
    if not text:
        return None
    found = spec.label_of(text)
    if found is None:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        found = spec.label_of(number) if math.isfinite(number) else None
    return text if found is None else found


class CsvFile:
    """A CSV file read against a model spec (the rules are in this module's header): the header
    is checked when it is opened, rows are converted as they are read."""

    def __init__(
        self, path: Path, spec: ModelSpec, label: str | None = None, time_column: str | None = None
    ) -> None:
        self.path, self.spec = path, spec
        with self._open() as fh:
            header = self._header(fh)
        self.columns = header
        self.label = label or spec.label.name
        if label is not None and label not in header:
            raise DataError(f"{path}: no label column {label!r} (columns: {', '.join(header)})")
        if time_column is not None and time_column not in header:
            raise DataError(f"{path}: no event-time column {time_column!r} (columns: {', '.join(header)})")
        self.time_column = time_column or ("event_time" if "event_time" in header else None)
        self.labelled = self.label in header
        features = {f.name: f for f in spec.features}
        self.used = {i: features[name] for i, name in enumerate(header) if name in features}
        self.ignored = [
            name for name in header if name not in features and name not in (self.label, self.time_column)
        ]
        absent = [f.name for f in spec.features if f.name not in header]
        required = [name for name in absent if features[name].required and features[name].default is None]
        if required:
            raise DataError(
                f"{path}: no column for the required feature(s) {', '.join(required)} of model {spec.name}"
            )
        self.defaulted = [name for name in absent if name not in required]

    def _open(self) -> Any:
        try:
            return self.path.open(newline="", encoding="utf-8-sig")
        except OSError as exc:
            raise DataError(f"{self.path}: {exc.strerror or exc}") from None

    def _header(self, fh: Any) -> list[str]:
        try:
            header = next((row for row in csv.reader(fh, strict=True) if row), None)
        except UnicodeDecodeError as exc:
            raise DataError(f"{self.path}: not UTF-8 text: {exc}") from None
        except csv.Error as exc:
            raise DataError(f"{self.path}: unreadable header: {exc}") from None
        if header is None:
            raise DataError(f"{self.path}: empty file; the first row must name the columns")
        twice = sorted({name for name in header if header.count(name) > 1})
        if twice:
            raise DataError(f"{self.path}: column(s) {', '.join(map(repr, twice))} appear more than once")
        return header

    def rows(self) -> Iterator[CsvRow | Refused]:
        """Each data row, converted; or refused with its line number."""
        label_at = self.columns.index(self.label) if self.labelled else None
        with self._open() as fh:
            reader = csv.reader(fh, strict=True)
            header = False
            while True:
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield Refused(reader.line_num, "unreadable_row", str(exc))
                    continue
                except UnicodeDecodeError as exc:
                    where = f"after line {reader.line_num}"
                    raise DataError(f"{self.path}: not UTF-8 text {where}: {exc}") from None
                if not cells:  # a blank line
                    continue
                if not header:
                    header = True
                    continue
                yield self._row(reader.line_num, cells, label_at)

    def _row(self, line: int, cells: list[str], label_at: int | None) -> CsvRow | Refused:
        if len(cells) != len(self.columns):
            return Refused(line, "ragged_row", f"{len(cells)} cells, the header has {len(self.columns)}")
        features: dict[str, FeatureValue] = {}
        for i, feature in self.used.items():
            try:
                value = cell_value(feature, cells[i])
            except ValueError as exc:
                return Refused(line, "not_finite", str(exc))
            if value is not None:
                features[feature.name] = value
        label = None if label_at is None else label_value(self.spec, cells[label_at])
        at = None if self.time_column is None else cells[self.columns.index(self.time_column)]
        return CsvRow(line, features, label, at)
