"""The Open Inference Protocol codec (`driftloop.oip`), the inference service's view of a model
(`driftloop_inference.v2`) and its dynamic batching, checked against Triton's own client code
(`tritonclient`), which encodes requests and decodes responses as Triton's users do."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from driftloop.oip import (
    InferenceRequest,
    InferenceResponse,
    TensorError,
    column,
    decode_outputs,
    encode_response,
    output,
    split_body,
)
from driftloop.spec import load_spec
from driftloop_inference.domain import Lineup, Request, Scored
from driftloop_inference.http import Coalescer
from driftloop_inference.v2 import (
    ASKABLE,
    OUTPUTS,
    metadata,
    plain_requests,
    response,
    row_ids,
    rows_in,
    to_requests,
    wanted_outputs,
)
from tests.conftest import ROOT

NUMERIC = {
    "FP32": np.float32, "FP64": np.float64, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "BOOL": np.bool_,
}  # fmt: skip


def body_of(inputs, outputs=None, request_id=""):
    """A request body as Triton's client writes it: (bytes, JSON header length or None)."""
    body, header = triton.InferenceServerClient.generate_request_body(inputs, outputs, request_id)
    return body, header


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(sorted(NUMERIC)),
    rows=st.integers(0, 40),
    binary=st.booleans(),
    data=st.data(),
)
def test_numeric_tensors_read_as_tritons_client_wrote_them(kind, rows, binary, data):
    dtype = NUMERIC[kind]
    elements = hnp.from_dtype(np.dtype(dtype), allow_nan=False, allow_infinity=False, allow_subnormal=False)
    values = data.draw(hnp.arrays(dtype, rows, elements=elements))
    tensor = triton.InferInput("x", [rows], kind)
    tensor.set_data_from_numpy(values, binary_data=binary)
    request, binaries = split_body(*body_of([tensor]))
    got = column(request.inputs[0], binaries.get("x"))
    if kind.startswith("FP"):  # JSON carries a float32 as the shortest decimal of its float64
        assert np.array_equal(np.asarray(got, dtype=dtype), values)
    else:
        assert got == values.tolist()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(max_size=12), max_size=20), st.booleans())
def test_bytes_tensors_read_as_tritons_client_wrote_them(strings, binary):
    tensor = triton.InferInput("c", [len(strings)], "BYTES")
    tensor.set_data_from_numpy(np.array([s.encode() for s in strings], dtype=np.object_), binary_data=binary)
    request, binaries = split_body(*body_of([tensor]))
    assert column(request.inputs[0], binaries.get("c")) == strings


def test_nested_json_data_and_a_column_shape_are_one_row_each():
    request = InferenceRequest.model_validate(
        {"inputs": [{"name": "x", "shape": [3, 1], "datatype": "FP64", "data": [[1], [2.5], [3]]}]}
    )
    assert column(request.inputs[0]) == [1.0, 2.5, 3.0]


@pytest.mark.parametrize(
    "tensor, binary, why",
    [
        ({"shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3, 4]}, None, "is not [rows] or [rows, 1]"),
        ({"shape": [3], "datatype": "FP64", "data": [1, 2]}, None, "2 elements for shape [3]"),
        ({"shape": [2], "datatype": "FP64", "data": [1, "a"]}, None, "must be numbers"),
        ({"shape": [2], "datatype": "INT8", "data": [1, 300]}, None, "outside INT8's range"),
        ({"shape": [2], "datatype": "INT64", "data": [1, 2.5]}, None, "must be integers"),
        ({"shape": [1], "datatype": "BOOL", "data": [1]}, None, "true or false"),
        ({"shape": [1], "datatype": "BYTES", "data": [7]}, None, "must be strings"),
        ({"shape": [1], "datatype": "FP64"}, None, "has no data"),
        ({"shape": [2], "datatype": "FP64"}, b"\x00" * 12, "12 bytes for 2 FP64"),
        ({"shape": [1], "datatype": "BYTES"}, b"\x05\x00\x00\x00ab", "cut short"),
        ({"shape": [1], "datatype": "BYTES"}, b"\x02\x00\x00\x00\xff\xfe", "not UTF-8"),
    ],
)
def test_tensors_that_do_not_hold_what_they_say_are_refused(tensor, binary, why):
    request = InferenceRequest.model_validate({"inputs": [{"name": "x", **tensor}]})
    with pytest.raises(TensorError, match=why.replace("[", r"\[").replace("]", r"\]")):
        column(request.inputs[0], binary)


@pytest.mark.parametrize(
    "header, body, why",
    [
        (0, b"{}", "does not fit"),
        (99, b"{}", "does not fit"),
    ],
)
def test_binary_bodies_that_do_not_add_up_are_refused(header, body, why):
    with pytest.raises(TensorError, match=why):
        split_body(body, header)


def test_binary_sizes_past_the_body_or_bytes_left_over_are_refused():
    tensor = triton.InferInput("x", [2], "FP64")
    tensor.set_data_from_numpy(np.array([1.0, 2.0]))
    body, header = body_of([tensor])
    with pytest.raises(TensorError, match="past the body's end"):
        split_body(body[:-1], header)
    with pytest.raises(TensorError, match="after the last binary input"):
        split_body(body + b"!", header)


SEA = load_spec(ROOT / "models" / "sea.yaml")
AGRAWAL = load_spec(ROOT / "models" / "agrawal.yaml")


def served(request_id, version=1, p=0.8):
    return {"request_id": request_id, "model": "sea", "model_version": version, "prediction": int(p > 0.5),
            "probabilities": {"0": 1 - p, "1": p}, "error": None, "features": None}  # fmt: skip


@pytest.mark.parametrize("binary", [False, True])
def test_responses_read_back_with_tritons_client(binary):
    results = [served("a-0", 1, 0.8), served("a-1", 2, 0.3)]
    answer = response(SEA, "a", results, None)
    body, header = encode_response(answer, list(OUTPUTS) if binary else [])
    assert (header is not None) == binary
    read = triton.InferResult.from_response_body(body, header_length=header)
    assert read.get_response()["model_version"] == "1,2" and read.get_response()["id"] == "a"
    assert read.as_numpy("predict").tolist() == [1, 0]
    assert np.allclose(read.as_numpy("predict_proba"), [[0.2, 0.8], [0.7, 0.3]])
    assert read.as_numpy("model_version").tolist() == [1, 2]
    assert [x.decode() if isinstance(x, bytes) else x for x in read.as_numpy("request_id")] == ["a-0", "a-1"]
    ours, as_json = (
        decode_outputs(body, header),
        InferenceResponse.model_validate_json(encode_response(answer, [])[0]),
    )
    assert [(o.name, o.data) for o in ours.outputs] == [(o.name, o.data) for o in as_json.outputs], (
        "our reader"
    )
    contract = InferenceResponse.model_validate(answer).model_dump_json(exclude_none=True)
    assert orjson.loads(encode_response(answer, [])[0]) == orjson.loads(contract), (
        "the encoder writes the contract"
    )


def test_outputs_asked_for_come_in_that_order_and_unknown_ones_are_refused():
    asked = InferenceRequest.model_validate(
        {"inputs": [{"name": "x0", "shape": [1], "datatype": "FP64", "data": [1]}],
         "outputs": [{"name": "request_id"}, {"name": "predict", "parameters": {"binary_data": True}}]}
    )  # fmt: skip
    assert wanted_outputs(asked) == (["request_id", "predict"], ["predict"])
    answer = response(SEA, None, [served("r")], wanted_outputs(asked)[0])
    assert [o["name"] for o in answer["outputs"]] == ["request_id", "predict"]
    with pytest.raises(TensorError, match="not one of"):
        wanted_outputs(
            asked.model_copy(update={"outputs": [asked.outputs[0].model_copy(update={"name": "x"})]})
        )


def test_non_finite_probabilities_go_out_as_null():
    assert output("p", "FP64", [2], [0.5, float("nan")])["data"] == [0.5, None]


def test_metadata_lists_the_specs_features_and_the_outputs():
    about = metadata(AGRAWAL, [3, 4])
    kinds = {t.name: t.datatype for t in about.inputs}
    assert kinds["elevel"] == "BYTES" and kinds["salary"] == "FP64" and kinds["entity_id"] == "BYTES"
    assert about.versions == ["3", "4"] and [t.name for t in about.outputs] == list(ASKABLE)
    assert about.outputs[1].shape == [-1, 2]


def test_rows_become_requests_with_categorical_codes_as_strings_and_entities():
    request = InferenceRequest.model_validate({"inputs": [
        {"name": "elevel", "shape": [2], "datatype": "INT64", "data": [1, 4]},
        {"name": "salary", "shape": [2, 1], "datatype": "FP32", "data": [[10.5], [20]]},
        {"name": "entity_id", "shape": [2], "datatype": "BYTES", "data": ["e1", ""]},
    ]})  # fmt: skip
    made = to_requests(AGRAWAL, request, {}, row_ids("q", 2))
    assert made == [
        Request("q-0", "agrawal", {"elevel": "1", "salary": 10.5}, "e1"),
        Request("q-1", "agrawal", {"elevel": "4", "salary": 20.0}, None),
    ]


@pytest.mark.parametrize(
    "inputs, why",
    [
        ([{"name": "nope", "shape": [1], "datatype": "FP64", "data": [1]}], "is not an input of model sea"),
        ([{"name": "x0", "shape": [1], "datatype": "FP64", "data": [1]}] * 2, "is given twice"),
        ([{"name": "x0", "shape": [1], "datatype": "FP64", "data": [1]},
          {"name": "x1", "shape": [2], "datatype": "FP64", "data": [1, 2]}], "has 2 rows, the first input 1"),
        ([{"name": "entity_id", "shape": [1], "datatype": "INT64", "data": [1]}], "must be BYTES"),
    ],
)  # fmt: skip
def test_tensors_that_make_no_rows_of_the_model_are_refused(inputs, why):
    request = InferenceRequest.model_validate({"inputs": inputs})
    with pytest.raises(TensorError, match=why):
        to_requests(SEA, request, {}, row_ids(None, 1))


def test_row_ids_are_random_when_the_request_has_none():
    first, second = row_ids(None, 1), row_ids(None, 1)
    assert first != second and len(first[0]) == 32


class Recorder:
    """An `answer` that records each run's rows and answers each request with its own id."""

    def __init__(self, fail=False):
        self.runs: list[list[str]] = []
        self.fail = fail

    async def __call__(self, requests, lineup):
        self.runs.append([r.request_id for r in requests])
        await asyncio.sleep(0)
        if self.fail:
            raise RuntimeError("the store is down")
        shadow = [{"request_id": r.request_id, "shadow": True} for r in requests[::2]]  # every other row
        return [served(r.request_id) for r in requests], Scored([], shadow)


def rows(prefix, n):
    return [Request(f"{prefix}{i}", "sea", {}) for i in range(n)]


async def test_requests_within_the_window_share_one_model_run_and_get_their_own_answers():
    answer = Recorder()
    coalescer = Coalescer(answer, Lineup, delay_s=0.05, rows=1000)
    got = await asyncio.gather(*(coalescer.answer(rows(f"r{k}-", k + 1)) for k in range(5)))
    assert len(answer.runs) == 1 and len(answer.runs[0]) == 15
    assert [[r["request_id"] for r in results] for results, _ in got] == [
        [f"r{k}-{i}" for i in range(k + 1)] for k in range(5)
    ]
    shadowed = [[a["request_id"] for a in shadow] for _, shadow in got]
    everything = [f"r{k}-{i}" for k in range(5) for i in range(k + 1)]
    assert shadowed == [[i for i in everything[::2] if i.startswith(f"r{k}-")] for k in range(5)], "its own"


async def test_a_full_window_runs_at_once_and_later_requests_wait_for_the_next():
    answer = Recorder()
    coalescer = Coalescer(answer, Lineup, delay_s=10.0, rows=4)  # only a full window runs
    first = asyncio.gather(coalescer.answer(rows("a", 3)), coalescer.answer(rows("b", 1)))
    assert [len(results) for results, _ in await asyncio.wait_for(first, 1)] == [3, 1]
    later = asyncio.ensure_future(coalescer.answer(rows("c", 1)))
    await asyncio.sleep(0.05)
    assert not later.done() and len(answer.runs) == 1
    await coalescer.drain()  # at shutdown: what waits runs
    assert [r["request_id"] for r in (await later)[0]] == ["c0"]


async def test_a_failed_run_fails_each_of_its_requests():
    coalescer = Coalescer(Recorder(fail=True), Lineup, delay_s=0.0, rows=100)
    outcomes = await asyncio.gather(coalescer.answer(rows("a", 2)), coalescer.answer(rows("b", 1)),
                                    return_exceptions=True)  # fmt: skip
    assert [str(o) for o in outcomes] == ["the store is down"] * 2


NAMES = ["x0", "x1", "x2", "entity_id", "other"]
ELEMENT = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-5, 5),
    st.integers(-(10**30), 10**30),
    st.text(max_size=3),
    st.booleans(),
)


@st.composite
def v2_bodies(draw):
    """Request bodies near the plain form: names, datatypes, shapes and elements of every kind."""
    rows = draw(st.integers(0, 4))
    inputs = []
    for name in draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5)):
        shape = draw(st.sampled_from([[rows], [rows, 1], [rows + 1], [rows, 2], [10**12], [], [rows, 1.0]]))
        kind = draw(st.sampled_from(["FP64", "FP32", "BYTES", "INT64"]))
        values = draw(st.lists(ELEMENT, min_size=rows, max_size=rows))
        inputs.append({"name": name, "shape": shape, "datatype": kind, "data": values})
    body = {"inputs": inputs}
    if draw(st.booleans()):
        body["id"] = draw(st.text(max_size=5))
    if draw(st.booleans()):
        body[draw(st.sampled_from(["parameters", "outputs", "extra"]))] = None
    return body


@settings(max_examples=400, deadline=None)
@given(v2_bodies())
def test_the_plain_reading_of_a_request_is_the_contracts(body):
    try:
        raw = orjson.dumps(body)
    except TypeError:  # an integer past 64 bits: orjson writes none, a client may
        raw = json.dumps(body).encode()
    plain = plain_requests(SEA, orjson.loads(raw)) if raw.startswith(b"{") and _orjson_reads(raw) else None
    if plain is None:
        try:  # the contract's reading refuses it with a reason, or reads rows: never anything else
            request, _ = split_body(raw, None)
            to_requests(SEA, request, {}, row_ids(request.id, min(rows_in(request), 10)))
        except (TensorError, ValueError):
            pass
        return
    request, _ = split_body(raw, None)
    ids = row_ids(request.id, rows_in(request))
    if not request.id:  # each reading draws its own random id
        ids = [r.request_id for r in plain[1]]
    assert plain == (request.id, to_requests(SEA, request, {}, ids))


def _orjson_reads(raw):
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


def test_a_usual_request_takes_the_plain_reading():
    x0 = {"name": "x0", "shape": [2], "datatype": "FP64", "data": [1.5, 2]}
    x1 = {"name": "x1", "shape": [2, 1], "datatype": "FP32", "data": [7.0, 8.5]}
    body = {"id": "a", "inputs": [x0, x1]}
    assert plain_requests(SEA, body) == (
        "a",
        [Request("a-0", "sea", {"x0": 1.5, "x1": 7.0}), Request("a-1", "sea", {"x0": 2.0, "x1": 8.5})],
    )


def test_an_empty_token_is_refused_rather_than_leaving_the_api_open():
    from pydantic import ValidationError

    from driftloop_inference.settings import InferenceSettings

    with pytest.raises(ValidationError, match="empty token"):
        InferenceSettings(http_token="")
    assert InferenceSettings(http_token="t").http_token.get_secret_value() == "t"
