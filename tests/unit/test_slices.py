"""Slices (`driftloop.slices`) against a brute-force oracle, their bounded cardinality, the spec's
slices section, and the monitor flagging the one slice whose concept drifts alone."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftloop.contracts import (
    CalibrationTable,
    DriftDetected,
    ModelPromoted,
    PredictionRequest,
    result_json,
)
from driftloop.settings import Topics
from driftloop.slices import CAPACITY_PER_TOP, MISSING, OTHER, SliceBook, Slicer
from driftloop.spec import ModelSpec, SpecFieldError, load_spec
from tests.conftest import ROOT
from tests.helpers import records

TOPICS = Topics()


def spec_with(slices: dict, **changes) -> ModelSpec:
    data = load_spec(ROOT / "models" / "agrawal.yaml").model_dump(mode="json")
    data["slices"] = slices
    data.update(changes)
    return ModelSpec.model_validate(data)


def oracle(events, window, min_rows, positive):
    """Per slice, from the whole history: volume, and over its newest `window` answers (labelled
    ones for accuracy) the positive rate, mean chance and accuracy; per input the gaps."""
    served, labelled = {}, {}
    for kind, keys, a, b in events:
        for key in keys:
            if kind == "served":
                served.setdefault(key, []).append((a == positive, b))
            else:
                labelled.setdefault(key, []).append(a)
    figures = {}
    for key in set(served) | set(labelled):
        rows, outcomes = served.get(key, []), labelled.get(key, [])
        recent, right = rows[-window:], outcomes[-window:]
        figures[key] = {
            "volume": len(rows),
            "positive_rate": sum(p for p, _ in recent) / len(recent) if recent else None,
            "estimated": sum(c for _, c in recent) / len(recent) if recent else None,
            "accuracy": sum(right) / len(right) if right else None,
            "labelled": len(right),
            "served": len(recent),
        }
    gaps = {}
    for name in {k[0] for k in figures}:
        acc = {k[1]: f["accuracy"] for k, f in figures.items() if k[0] == name and f["labelled"] >= min_rows}
        pos = {
            k[1]: f["positive_rate"] for k, f in figures.items() if k[0] == name and f["served"] >= min_rows
        }
        gaps[name] = (
            max(acc.values()) - min(acc.values()) if len(acc) > 1 else None,
            max(pos.values()) - min(pos.values()) if len(pos) > 1 else None,
        )
    return figures, gaps


@settings(max_examples=40, deadline=None)
@given(
    stream=st.lists(
        st.tuples(
            st.sampled_from(["served", "labelled"]),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["0", "1"]),
            st.floats(0.5, 1.0),
            st.booleans(),
        ),
        max_size=300,
    ),
    window=st.integers(50, 80),
    min_rows=st.integers(1, 30),
)
def test_slice_figures_equal_a_brute_force_oracle(stream, window, min_rows):
    spec = spec_with({"by": [{"input": "elevel"}], "top": 5, "window": window, "min_rows": min_rows})
    book = SliceBook(spec)
    events = []
    for kind, value, predicted, chance, correct in stream:
        values = {"elevel": value}
        if kind == "served":
            keys = book.served(values, predicted, chance)
            events.append(("served", keys, predicted, chance))
        else:
            keys = book.labelled(values, correct)
            events.append(("labelled", keys, correct, None))
    figures, gaps = oracle(events, window, min_rows, book.positive)
    for key, expected in figures.items():
        stats = book.stats[key]
        assert stats.volume == expected["volume"]
        for name in ("positive_rate", "estimated", "accuracy"):
            got = getattr(stats, name)
            assert (got is None) == (expected[name] is None) and (
                got is None or got == pytest.approx(expected[name])
            )
    for name, (accuracy, positive) in gaps.items():
        gap = book.gap(name)
        assert (
            gap.accuracy_gap == pytest.approx(accuracy) if accuracy is not None else gap.accuracy_gap is None
        )
        assert (
            gap.positive_rate_gap == pytest.approx(positive)
            if positive is not None
            else gap.positive_rate_gap is None
        )


def test_cardinality_is_bounded_under_100000_distinct_values_and_the_heavy_values_are_the_slices():
    spec = spec_with({"by": [{"input": "elevel"}, {"input": "salary", "edges": [50_000, 100_000]}], "top": 5})
    book = SliceBook(spec)
    rng = random.Random(1)
    heavy = [f"heavy{i}" for i in range(5)]
    for i in range(100_000):
        value = rng.choice(heavy) if rng.random() < 0.5 else f"rare{i}"  # 100k distinct values besides
        book.served({"elevel": value, "salary": ">= 100000"}, "1", 0.9)
    names = {value for name, value in book.stats if name == "elevel"}
    assert names <= {*heavy, OTHER} and set(heavy) <= names, "the heavy values are the slices"
    assert len(book.tops["elevel"].counts) <= CAPACITY_PER_TOP * 5
    assert len(book.stats) <= 2 * (5 + 1) and len(book.pruned) > 0  # early values that left the top
    assert book.stats[("elevel", OTHER)].volume == pytest.approx(50_000, rel=0.02)


def test_a_slicer_buckets_numbers_uses_time_parts_and_bounds_categories():
    from datetime import UTC, datetime

    spec = spec_with(
        {"by": [{"input": "salary", "edges": [50_000]}, {"input": "elevel"}, {"input": "hour"}]},
        time_parts=[{"name": "hour", "part": "hour"}],
    )
    slicer = Slicer(spec)
    values = slicer({"salary": 70_000, "elevel": "3"}, datetime(2026, 1, 1, 17, tzinfo=UTC))
    assert values == {"salary": ">= 50000", "elevel": "3", "hour": "17"}
    assert slicer({"elevel": "x" * 1000}, None) == {
        "salary": MISSING,
        "elevel": "unknown",
        "hour": MISSING,
    }


@pytest.mark.parametrize(
    ("slices", "path"),
    [
        ({"by": [{"input": "nope"}]}, "slices.by[0].input"),
        ({"by": [{"input": "salary"}]}, "slices.by[0].edges"),
        ({"by": [{"input": "elevel", "edges": [1]}]}, "slices.by[0].edges"),
        ({"by": [{"input": "elevel"}, {"input": "elevel"}]}, "slices.by"),
        ({"by": [{"input": "elevel"}], "positive": 7}, "slices.positive"),
    ],
)
def test_the_spec_refuses_slices_it_cannot_watch(slices, path):
    with pytest.raises(Exception) as refused:
        spec_with(slices)
    assert path in str(refused.value)
    assert isinstance(refused.value, SpecFieldError | ValueError)


async def test_the_monitor_flags_the_one_slice_whose_concept_drifts_alone():
    """x2 (SEA's noise input) cut at 5: labels of the requests with x2 < 5 stop following the model
    (their concept drifts); the other half stays right. Answers come before their requests for a
    third of the traffic: they are counted all the same."""
    from driftloop.spec import load_specs
    from driftloop_monitor.adapters import InMemoryJoinStore
    from driftloop_monitor.handlers import SLICE_ACCURACY, SLICE_GAP, Monitor

    spec = load_specs(ROOT / "models")["sea"]
    spec = ModelSpec.model_validate(
        spec.model_dump(mode="json") | {"slices": {"by": [{"input": "x2", "edges": [5]}], "min_rows": 100}}
    )
    monitor = Monitor({"sea": spec}, joins=InMemoryJoinStore(), topics=TOPICS, quality_window=1000)
    artifact = {"uri": "mem://a", "sha256": "0" * 64, "size_bytes": 1}
    table = CalibrationTable(edges=[], accuracy=[0.9], rows=100, overall=0.9)
    await monitor.on_lifecycle(
        ModelPromoted(
            model="sea",
            version=1,
            reason="bootstrap",
            artifact=artifact,
            classes=[0, 1],
            feature_names=["x0", "x1", "x2"],
            calibration=table,
        )
    )
    rng = random.Random(4)
    events = []
    for batch in range(6):
        requests, results, feedback = [], [], []
        for i in range(batch * 200, batch * 200 + 200):
            x2 = rng.uniform(0, 10)
            request = PredictionRequest(
                request_id=f"r{i}", model="sea", features={"x0": 1, "x1": 1, "x2": x2}
            )
            requests.append(request.model_dump_json().encode())
            results.append(
                orjson.dumps(result_json(f"r{i}", "sea", 1, prediction=1, probabilities={"0": 0.1, "1": 0.9}))
            )
            label = 0 if x2 < 5 and batch >= 2 else 1  # the x2 < 5 slice drifts from the third batch
            feedback.append(orjson.dumps({"request_id": f"r{i}", "model": "sea", "label": label}))
        early = len(results) // 3
        batches = [
            records(TOPICS.predictions_results, results[:early]),  # before their requests
            records(TOPICS.predictions_requests, requests),
            records(TOPICS.predictions_results, results[early:]),
            records(TOPICS.predictions_feedback, feedback),
        ]
        for part in batches:
            handled = await monitor.handle(part)
            drifts = [
                DriftDetected.model_validate_json(o.value)
                for o in handled.outputs
                if o.topic == TOPICS.monitor_drift
            ]
            events += [d for d in drifts if d.kind == "slice"]
            if handled.then is not None:
                await handled.then()
    (event,) = events  # once, while the gap lasts
    assert event.feature == "x2" and event.segment == "< 5" and event.statistic > spec.slices.max_accuracy_gap
    assert SLICE_ACCURACY.labels("sea", "x2", ">= 5")._value.get() == 1.0
    assert SLICE_ACCURACY.labels("sea", "x2", "< 5")._value.get() < 0.5
    assert SLICE_GAP.labels("sea", "x2", "accuracy")._value.get() >= event.statistic
    book = monitor.watches["sea"].slices
    assert book is not None
    volumes = [book.stats[("x2", s)].volume for s in ("< 5", ">= 5")]
    assert sum(volumes) == 1200, "every answer counted once, in one slice, whatever came first"
