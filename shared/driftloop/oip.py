"""The Open Inference Protocol (KServe v2) over HTTP: its JSON messages as contracts, and tensors
to and from columns of values.

A tensor travels as JSON (`data`: its elements in row-major order, flat or nested) or, in the
binary tensor data extension that Triton's clients use by default, as raw bytes after the JSON
header (`Inference-Header-Content-Length` gives the header's size, each tensor's
`parameters.binary_data_size` its bytes: numbers little-endian, each BYTES element a 4-byte
little-endian length then its bytes). `schemas/openapi/inference.json` is generated from these
models (`make schemas`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip
NUMPY: dict[str, str] = {
    "BOOL": "bool", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}  # fmt: skip
Parameters = dict[str, StrictBool | StrictInt | StrictFloat | StrictStr]
HEADER_LENGTH = "inference-header-content-length"  # HTTP header (lower case, as ASGI gives them)


class TensorError(ValueError):
    """A tensor that does not hold what it says (shape, datatype, data): a 400 for the caller."""


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")  # fields of later protocol versions pass


class RequestInput(_Message):
    """An input tensor: one feature's values, one per row (shape `[rows]` or `[rows, 1]`)."""

    name: str = Field(min_length=1, max_length=256, description="The feature it carries.")
    shape: list[StrictInt] = Field(min_length=1, max_length=8, description="Dimensions; rows first.")
    datatype: Datatype = Field(description="Element type; BYTES for strings (categorical features).")
    parameters: Parameters | None = Field(default=None, description="`binary_data_size` for binary data.")
    data: Any = Field(default=None, description="Elements in row-major order, flat or nested.")


class RequestOutput(_Message):
    """An output the caller asks for (all of them when the request names none)."""

    name: str = Field(min_length=1, max_length=256)
    parameters: Parameters | None = Field(default=None, description="`binary_data: true` for raw bytes.")


class InferenceRequest(_Message):
    """`POST /v2/models/{model}[/versions/{version}]/infer`."""

    id: str | None = Field(default=None, max_length=256, description="Echoed in the response.")
    parameters: Parameters | None = Field(default=None, description="`binary_data_output: true`: raw bytes.")
    inputs: list[RequestInput] = Field(min_length=1, max_length=1024)
    outputs: list[RequestOutput] | None = Field(default=None, max_length=64)


class ResponseOutput(_Message):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(_Message):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(_Message):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1 for a dimension of any size (the rows).")


class ModelMetadata(_Message):
    """`GET /v2/models/{model}[/versions/{version}]`."""

    name: str
    versions: list[str] = Field(default_factory=list, description="Versions loaded (champion, challenger).")
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ServerMetadata(_Message):
    """`GET /v2`."""

    name: str
    version: str
    extensions: list[str]


class ErrorBody(_Message):
    """Every error answer's body."""

    error: str


def rows_of(tensor: RequestInput) -> int:
    """The rows a feature tensor holds: shape `[rows]` or `[rows, 1]`.

    >>> rows_of(RequestInput(name="x", shape=[3, 1], datatype="FP64", data=[1, 2, 3]))
    3
    """
    shape = tensor.shape
    if any(d < 0 for d in shape) or not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise TensorError(f"input {tensor.name!r:.80}: shape {shape} is not [rows] or [rows, 1]")
    return shape[0]


def _flat(data: Any) -> list[Any]:
    """Nested lists' elements in row-major order."""
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(x, list) for x in data):
        return data
    out: list[Any] = []
    for item in data:
        out += _flat(item)
    return out


def column(tensor: RequestInput, binary: bytes | None = None) -> list[Any]:
    """A feature tensor's elements as plain Python values (float, int, bool or str), from its JSON
    `data` or its binary bytes.

    >>> column(RequestInput(name="x", shape=[2], datatype="FP32", data=[[1.5], [2]]))
    [1.5, 2.0]
    >>> column(RequestInput(name="c", shape=[2], datatype="BYTES", data=["a", "b"]))
    ['a', 'b']
    """
    rows = rows_of(tensor)
    if binary is not None:
        values = _from_bytes(tensor, binary, rows)
    elif tensor.data is None:
        raise TensorError(f"input {tensor.name!r:.80} has no data")
    else:
        values = _from_json(tensor, _flat(tensor.data))
    if len(values) != rows:
        raise TensorError(f"input {tensor.name!r:.80}: {len(values)} elements for shape {tensor.shape}")
    return values


_INTEGERS = {int}
_NUMBERS = {int, float}


def _from_json(tensor: RequestInput, items: list[Any]) -> list[Any]:
    kind = tensor.datatype
    types = set(map(type, items))
    if kind == "FP64" or kind == "FP32" or kind == "FP16":
        if types <= {float}:
            return items
        if types <= _NUMBERS:
            try:
                return [float(x) for x in items]
            except OverflowError:  # an integer literal past any float
                raise TensorError(f"input {tensor.name!r:.80}: an element is past {kind}'s range") from None
        raise TensorError(f"input {tensor.name!r:.80}: {kind} elements must be numbers")
    if kind == "BYTES":
        if types <= {str}:
            return items
        raise TensorError(f"input {tensor.name!r:.80}: BYTES elements must be strings in JSON")
    if kind == "BOOL":
        if types <= {bool}:
            return items
        raise TensorError(f"input {tensor.name!r:.80}: BOOL elements must be true or false")
    if not types <= _INTEGERS:
        raise TensorError(f"input {tensor.name!r:.80}: {kind} elements must be integers")
    info = np.iinfo(np.dtype(NUMPY[kind]))
    if items and not (info.min <= min(items) and max(items) <= info.max):
        raise TensorError(f"input {tensor.name!r:.80}: an element is outside {kind}'s range")
    return items


def _from_bytes(tensor: RequestInput, raw: bytes, rows: int) -> list[Any]:
    if tensor.datatype == "BYTES":
        out, at = [], 0
        while at < len(raw):
            if at + 4 > len(raw):
                raise TensorError(f"input {tensor.name!r:.80}: binary BYTES cut short")
            (size,) = struct.unpack_from("<I", raw, at)
            if at + 4 + size > len(raw):
                raise TensorError(f"input {tensor.name!r:.80}: binary BYTES cut short")
            try:
                out.append(raw[at + 4 : at + 4 + size].decode())
            except UnicodeDecodeError:
                raise TensorError(f"input {tensor.name!r:.80}: an element is not UTF-8") from None
            at += 4 + size
        return out
    dtype = np.dtype(NUMPY[tensor.datatype])
    if len(raw) != rows * dtype.itemsize:
        raise TensorError(f"input {tensor.name!r:.80}: {len(raw)} bytes for {rows} {tensor.datatype}")
    array = np.frombuffer(raw, dtype=dtype)
    return array.astype(np.float64).tolist() if array.dtype.kind == "f" else array.tolist()


def split_body(body: bytes, header_length: int | None) -> tuple[InferenceRequest, dict[str, bytes]]:
    """The request and, by input name, each binary input's bytes (the binary extension)."""
    if header_length is None:
        return InferenceRequest.model_validate_json(body), {}
    if not 0 < header_length <= len(body):
        raise TensorError(f"{HEADER_LENGTH} {header_length} does not fit a body of {len(body)} bytes")
    request = InferenceRequest.model_validate_json(body[:header_length])
    binaries, at = {}, header_length
    for tensor in request.inputs:
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        if type(size) is not int or size < 0 or at + size > len(body):
            raise TensorError(f"input {tensor.name!r:.80}: binary_data_size {size!r:.40} past the body's end")
        binaries[tensor.name] = body[at : at + size]
        at += size
    if at != len(body):
        raise TensorError(f"{len(body) - at} bytes after the last binary input")
    return request, binaries


def output(name: str, datatype: str, shape: list[int], values: list[Any]) -> dict[str, Any]:
    """A JSON output tensor as the dict `ResponseOutput` describes (values in row-major order).
    Non-finite floats are not JSON: null."""
    if datatype.startswith("FP") and not all(map(math.isfinite, values)):
        values = [v if math.isfinite(v) else None for v in values]
    return {"name": name, "datatype": datatype, "shape": shape, "data": values}


def encode_response(response: dict[str, Any], binary: Sequence[str]) -> tuple[bytes, int | None]:
    """The body of a response (a dict as `InferenceResponse` describes it, its None fields left
    out), the outputs named in `binary` as raw bytes after the JSON header; and the header's length
    when any are (for `Inference-Header-Content-Length`). A unit test holds the JSON equal to the
    contract's."""
    if not binary:
        return orjson.dumps(response), None
    chunks, outputs = [], []
    for out in response["outputs"]:
        if out["name"] not in binary:
            outputs.append(out)
            continue
        raw = _to_bytes(out)
        chunks.append(raw)
        parameters = {**out.get("parameters", {}), "binary_data_size": len(raw)}
        outputs.append({k: v for k, v in out.items() if k != "data"} | {"parameters": parameters})
    header = orjson.dumps({**response, "outputs": outputs})
    return header + b"".join(chunks), len(header)


def _to_bytes(out: dict[str, Any]) -> bytes:
    values = out["data"]
    if out["datatype"] == "BYTES":
        parts = [str(v).encode() for v in values]
        return b"".join(struct.pack("<I", len(p)) + p for p in parts)
    return np.asarray([math.nan if v is None else v for v in values], dtype=NUMPY[out["datatype"]]).tobytes()


def decode_outputs(body: bytes, header_length: int | None) -> InferenceResponse:
    """A response read back, binary outputs decoded into `data` (for clients and tests)."""
    if header_length is None:
        return InferenceResponse.model_validate_json(body)
    response = InferenceResponse.model_validate_json(body[:header_length])
    outputs, at = [], header_length
    for out in response.outputs:
        size = (out.parameters or {}).get("binary_data_size")
        if type(size) is not int:
            outputs.append(out)
            continue
        raw, at = body[at : at + size], at + size
        rows = math.prod(out.shape) if out.shape else 0
        tensor = RequestInput(name=out.name, shape=[rows], datatype=out.datatype)
        outputs.append(out.model_copy(update={"data": _from_bytes(tensor, raw, rows)}))
    return response.model_copy(update={"outputs": outputs})
