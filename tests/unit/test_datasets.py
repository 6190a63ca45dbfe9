"""Synthetic streams are named and shaped by the model specs in models/: every stream's rows pass
its spec's validation, and each concept is a different labelling of the same inputs."""

import itertools

import pytest

from driftloop import datasets
from driftloop.features import FeatureSet, check_features
from driftloop.spec import load_specs
from tests.conftest import ROOT
from tests.oracles import matrix

SPECS = load_specs(ROOT / "models")


@pytest.mark.parametrize("name", sorted(datasets.SYNTHETIC))
def test_every_synthetic_stream_has_a_spec_its_rows_pass(name):
    spec = SPECS[name]
    concepts, _ = datasets.SYNTHETIC[name]
    for concept in (concepts.start, concepts.stop - 1):
        rows = list(itertools.islice(datasets.conform(spec, datasets.synthetic(name, concept, seed=3)), 500))
        X = matrix(FeatureSet(spec), [check_features(spec, x) for x, _ in rows])
        assert X.shape == (500, len(FeatureSet(spec).names))
        assert {spec.label_of(y) for _, y in rows} <= set(spec.label.classes)


def test_concepts_label_the_same_inputs_differently():
    first = list(itertools.islice(datasets.synthetic("agrawal", 0, seed=5), 2000))
    second = list(itertools.islice(datasets.synthetic("agrawal", 2, seed=5), 2000))
    assert [x for x, _ in first] == [x for x, _ in second]
    assert sum(a != b for (_, a), (_, b) in zip(first, second, strict=True)) > 200


def test_abrupt_drift_switches_concept_at_the_given_row():
    drifted = datasets.abrupt(
        datasets.synthetic("stagger", 0, 1), datasets.synthetic("stagger", 2, 7), at=100
    )
    rows = list(itertools.islice(drifted, 300))
    first, second = datasets.synthetic("stagger", 0, 1), datasets.synthetic("stagger", 2, 7)
    assert rows == list(itertools.islice(first, 100)) + list(itertools.islice(second, 200))


def test_unknown_stream_or_concept_is_refused():
    with pytest.raises(ValueError, match="unknown synthetic stream"):
        datasets.synthetic("nope", 0, 1)
    with pytest.raises(ValueError, match=r"concepts 0\.\.2"):
        datasets.synthetic("stagger", 3, 1)


# ---------------------------------------------------------------- CSV files against a spec

MIXED = SPECS["sea"].model_copy(
    update={
        "features": [
            *SPECS["sea"].features[:2],
            SPECS["sea"].features[2].model_copy(update={"required": False, "default": 5.0}),
            *SPECS["stagger"].features[:1],  # categorical "0", "1", "2"
        ]
    }
)


def _csv(tmp_path, text: str | bytes, spec=MIXED, label=None) -> datasets.CsvFile:
    path = tmp_path / "data.csv"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    return datasets.CsvFile(path, spec, label)


def _rows(csv_file):
    return [
        (r.line, r.features, r.label) if isinstance(r, datasets.CsvRow) else (r.line, r.reason)
        for r in csv_file.rows()
    ]


def test_a_bom_and_crlf_line_endings_read_like_plain_utf8(tmp_path):
    plain = _rows(_csv(tmp_path, "x0,x1,x2,size,y\n1,2,3,1,0\n"))
    assert _rows(_csv(tmp_path, b"\xef\xbb\xbfx0,x1,x2,size,y\r\n1,2,3,1,0\r\n")) == plain
    assert plain == [(2, {"x0": 1.0, "x1": 2.0, "x2": 3.0, "size": "1"}, 0)]


def test_cells_are_converted_by_the_spec_types_categories_stay_exact_text(tmp_path):
    rows = _rows(_csv(tmp_path, "x0,x1,x2,size,y\n01,1e1,-0,01,1\n"))
    assert rows == [(2, {"x0": 1.0, "x1": 10.0, "x2": -0.0, "size": "01"}, 1)]


def test_an_empty_cell_is_missing_and_text_that_is_no_number_is_sent_for_the_platform_to_refuse(
    tmp_path,
):
    rows = _rows(_csv(tmp_path, "x0,x1,x2,size,y\n1,abc,,,1\n"))
    assert rows == [(2, {"x0": 1.0, "x1": "abc"}, 1)]  # x2 and size: the spec's defaults apply


@pytest.mark.parametrize("cell", ["nan", "NaN", "inf", "-Infinity", " nan "])
def test_a_number_that_is_not_finite_is_refused_with_its_line(tmp_path, cell):
    rows = _rows(_csv(tmp_path, f"x0,x1,x2,size,y\n1,1,1,1,1\n{cell},1,1,1,1\n2,2,2,2,0\n"))
    assert rows[1] == (3, "not_finite")
    assert [r[0] for r in rows] == [2, 3, 4]  # the next rows flow


def test_ragged_rows_are_refused_with_their_line_blank_lines_skipped(tmp_path):
    text = 'x0,x1,x2,size,y\n1,1,1,1,1,extra\n\n1,1\n"1","1",1,"1\n",0\n'
    rows = _rows(_csv(tmp_path, text))
    assert rows[:2] == [(2, "ragged_row"), (4, "ragged_row")]
    assert rows[2] == (6, {"x0": 1.0, "x1": 1.0, "x2": 1.0, "size": "1\n"}, 0)  # a quoted line break


def test_columns_not_in_the_spec_are_not_sent_and_named(tmp_path):
    csv_file = _csv(tmp_path, "id,x0,x1,size,note,y\n7,1,2,0,hello,1\n")
    assert csv_file.ignored == ["id", "note"]
    assert csv_file.defaulted == ["x2"]
    assert _rows(csv_file) == [(2, {"x0": 1.0, "x1": 2.0, "size": "0"}, 1)]


@pytest.mark.parametrize(
    ("cell", "label"), [("1", 1), ("1.0", 1), (" 0 ", 0), ("", None), ("7", "7"), ("yes", "yes")]
)
def test_the_label_maps_to_the_spec_classes_or_is_sent_as_text_to_be_refused(tmp_path, cell, label):
    assert _rows(_csv(tmp_path, f"x0,x1,size,y\n1,2,0,{cell}\n"))[0][2] == label


def test_the_label_column_is_the_spec_label_name_unless_given(tmp_path):
    assert MIXED.label.name == "y"
    assert not _csv(tmp_path, "x0,x1,size,label\n1,2,0,1\n").labelled  # "label": just another column
    given = _csv(tmp_path, "x0,x1,size,target\n1,2,0,1\n", label="target")
    assert given.labelled and _rows(given) == [(2, {"x0": 1.0, "x1": 2.0, "size": "0"}, 1)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file"),
        ("\n\n", "empty file"),
        ("x0,x0,x1\n1,2,3\n", "'x0' appear more than once"),
        ("x0,y\n1,1\n", r"no column for the required feature\(s\) x1, size of model sea"),
        (b"x0,x1\n1,\xff\n", "not UTF-8"),
        (b"x0,x1,size\n" + b"1,2,0\n" * 10_000 + b"1,\xff,0\n", "not UTF-8 text after line"),
    ],
)
def test_a_file_that_cannot_be_replayed_is_one_error(tmp_path, content, message):
    with pytest.raises(datasets.DataError, match=message):
        _rows(_csv(tmp_path, content))


def test_a_missing_file_or_label_column_is_one_error(tmp_path):
    with pytest.raises(datasets.DataError, match="No such file"):
        datasets.CsvFile(tmp_path / "nope.csv", MIXED)
    with pytest.raises(datasets.DataError, match="no label column 'target'"):
        _csv(tmp_path, "x0,x1,size,y\n1,2,0,1\n", label="target")


def test_what_replay_sends_is_accepted_or_refused_by_ingest_as_documented(tmp_path):
    """CSV rows as `driftloop replay` sends them, through ingest's own validation."""
    from datetime import UTC, datetime, timedelta

    from driftloop.contracts import Observation
    from driftloop.kafka import encode
    from driftloop.observations import checkers
    from driftloop_ingest.domain import validate_batch

    csv_file = _csv(
        tmp_path, "x0,x1,x2,size,y,extra\n1,2,3,01,1,z\n11,1,1,1,1,z\n1,,1,1,1,z\n1,x,1,1,1,z\n1,1,1,1,7,z\n"
    )
    rows = [r for r in csv_file.rows() if isinstance(r, datasets.CsvRow)]
    raws = [
        encode(Observation(event_id=f"e{r.line}", model=MIXED.name, features=r.features, label=r.label))
        for r in rows
    ]
    specs = {MIXED.name: MIXED}
    accepted, errors = validate_batch(raws, specs, checkers(specs), datetime.now(UTC), timedelta(minutes=5))
    assert list(accepted) == [0]
    assert {i: e.reason for i, e in errors.items()} == {
        1: "out_of_range",
        2: "missing_feature",
        3: "wrong_type",
        4: "invalid_label",
    }
