"""The Open Inference Protocol's view of a model: metadata from its spec, input tensors to
requests, results to output tensors. Pure; `driftloop_inference.http` serves it.

A model's inputs are its spec's raw features, one tensor each (FP64, or BYTES for categorical
ones; integer and BOOL tensors are read as numbers, integer tensors for a categorical feature as
their decimal strings), plus an optional BYTES `entity_id` whose stored features complete a row.
Its outputs: `predict` (the class), `predict_proba` (a column per class, in the order of its
`classes` parameter), `model_version` (the version that served each row: a canary splits them)
and `request_id` (each row's id on `predictions.results`, for sending its label as feedback).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from driftloop.oip import (
    InferenceRequest,
    MetadataTensor,
    ModelMetadata,
    RequestInput,
    TensorError,
    column,
    output,
    rows_of,
)
from driftloop.spec import ModelSpec
from driftloop_inference.domain import Request

ENTITY = "entity_id"
OUTPUTS = ("predict", "predict_proba", "model_version", "request_id")  # answered when none are asked
EXPLANATION = "explanation"  # on request only: each row's contributions, a JSON object per row (BYTES)
ASKABLE = (*OUTPUTS, EXPLANATION)
PLATFORM = "onnxruntime_onnx"


def _all_int(spec: ModelSpec) -> bool:
    return all(type(c) is int for c in spec.label.classes)


def metadata(spec: ModelSpec, versions: Sequence[int]) -> ModelMetadata:
    """What a client needs to call the model: its inputs and outputs, the versions loaded."""
    inputs = [
        MetadataTensor(name=f.name, datatype="BYTES" if f.type == "categorical" else "FP64", shape=[-1])
        for f in spec.features
    ]
    classes = len(spec.label.classes)
    return ModelMetadata(
        name=spec.name,
        versions=[str(v) for v in versions],
        platform=PLATFORM,
        inputs=[*inputs, MetadataTensor(name=ENTITY, datatype="BYTES", shape=[-1])],
        outputs=[
            MetadataTensor(name="predict", datatype="INT64" if _all_int(spec) else "BYTES", shape=[-1]),
            MetadataTensor(name="predict_proba", datatype="FP64", shape=[-1, classes]),
            MetadataTensor(name="model_version", datatype="INT64", shape=[-1]),
            MetadataTensor(name="request_id", datatype="BYTES", shape=[-1]),
            MetadataTensor(name=EXPLANATION, datatype="BYTES", shape=[-1]),
        ],
    )


def row_ids(given: str | None, rows: int) -> list[str]:
    """Each row's request id: the request's id for one row, `<id>-<row>` for several; a random id
    when the request has none.

    >>> row_ids("a", 1), row_ids("a", 2)
    (['a'], ['a-0', 'a-1'])
    """
    base = given or uuid.uuid4().hex
    return [base] if rows == 1 else [f"{base}-{i}" for i in range(rows)]


def to_requests(
    spec: ModelSpec, request: InferenceRequest, binaries: Mapping[str, bytes], request_ids: Sequence[str]
) -> list[Request]:
    """A request per row (`TensorError` for tensors that do not make rows of this model's inputs:
    the feature values themselves are checked as on the Kafka path, by `score`)."""
    kinds = _kinds(spec)
    columns: dict[str, list[Any]] = {}
    rows = len(request_ids)
    for tensor in request.inputs:
        if tensor.name != ENTITY and tensor.name not in kinds:
            raise TensorError(f"input {tensor.name!r:.80} is not an input of model {spec.name}")
        if tensor.name in columns:
            raise TensorError(f"input {tensor.name!r:.80} is given twice")
        if rows_of(tensor) != rows:
            raise TensorError(f"input {tensor.name!r:.80} has {tensor.shape[0]} rows, the first input {rows}")
        columns[tensor.name] = _values(tensor, binaries.get(tensor.name), kinds.get(tensor.name))
    return _rows(spec.name, columns, request_ids)


_FLOATS = {float}
_NUMBERS = {int, float}
_STRINGS = {str}


def plain_requests(spec: ModelSpec, data: Any) -> tuple[str | None, list[Request]] | None:
    """A decoded request body's id and rows when it is plain: an `id` string or none, no
    parameters and no outputs asked for, and every input a known feature (or `entity_id`) in a
    flat tensor of shape `[rows]` or `[rows, 1]`, FP64 or FP32 numbers for a numeric feature,
    BYTES strings for a categorical one or the entity. None for anything else, which
    `to_requests` reads through the contract (and refuses with a reason). The hot path: a
    property test holds both readings equal."""
    if type(data) is not dict or not data.keys() <= {"id", "inputs"}:
        return None
    request_id, inputs = data.get("id"), data.get("inputs")
    if not (request_id is None or (type(request_id) is str and len(request_id) <= 256)):
        return None
    if type(inputs) is not list or not 0 < len(inputs) <= 1024:
        return None
    kinds = _kinds(spec)
    columns: dict[str, list[Any]] = {}
    rows = -1
    try:
        for tensor in inputs:
            name, shape, kind, values = tensor["name"], tensor["shape"], tensor["datatype"], tensor["data"]
            if len(tensor) != 4 or type(values) is not list or type(shape) is not list or name in columns:
                return None
            if rows < 0:
                rows = len(values)
            if len(values) != rows or type(shape[0]) is not int or type(shape[-1]) is not int:
                return None
            if shape != [rows] and shape != [rows, 1]:
                return None
            feature = kinds.get(name) if type(name) is str else None
            if feature is None and name == ENTITY:
                feature = "entity"
            types = {type(values[0])} if rows == 1 else set(map(type, values))
            if feature == "numeric" and (kind == "FP64" or kind == "FP32") and types <= _NUMBERS:
                columns[name] = values if types <= _FLOATS else [float(v) for v in values]
            elif feature is not None and feature != "numeric" and kind == "BYTES" and types <= _STRINGS:
                columns[name] = values
            else:
                return None
    except (KeyError, TypeError, IndexError):  # not a dict, a missing key, an empty shape
        return None
    return request_id, _rows(spec.name, columns, row_ids(request_id, rows))


def _rows(model: str, columns: dict[str, list[Any]], request_ids: Sequence[str]) -> list[Request]:
    """A request per row from columns by input name (the entity's column, when given, aside)."""
    entities = columns.pop(ENTITY, None)
    names = list(columns)
    table: Iterable[tuple[Any, ...]] = (
        zip(*columns.values(), strict=True) if names else [()] * len(request_ids)
    )
    if entities is None:
        return [
            Request(i, model, dict(zip(names, values, strict=True)))
            for i, values in zip(request_ids, table, strict=True)
        ]
    return [
        Request(i, model, dict(zip(names, values, strict=True)), entity or None)
        for i, values, entity in zip(request_ids, table, entities, strict=True)
    ]


_KINDS: dict[int, tuple[ModelSpec, dict[str, str]]] = {}


def _kinds(spec: ModelSpec) -> dict[str, str]:
    """Feature name → type of a spec (kept per spec object: specs are immutable)."""
    kept = _KINDS.get(id(spec))
    if kept is None or kept[0] is not spec:
        kept = _KINDS[id(spec)] = (spec, {f.name: f.type for f in spec.features})
        if len(_KINDS) > 1024:
            _KINDS.clear()
    return kept[1]


def _values(tensor: RequestInput, binary: bytes | None, kind: str | None) -> list[Any]:
    values = column(tensor, binary)
    if kind is None and tensor.datatype != "BYTES":  # the entity id
        raise TensorError(f"input {ENTITY} must be BYTES")
    if kind == "categorical" and tensor.datatype.startswith(("INT", "UINT")):
        return [str(v) for v in values]
    if tensor.datatype == "BOOL":
        return [int(v) for v in values]
    return values


def rows_in(request: InferenceRequest) -> int:
    """The rows of a request: its first input's."""
    return rows_of(request.inputs[0])


def response(
    spec: ModelSpec,
    request_id: str | None,
    results: Sequence[Mapping[str, Any]],
    wanted: Sequence[str] | None,
) -> dict[str, Any]:
    """The `InferenceResponse` (as its dict) of served results (every one answered, none an
    error): the outputs `wanted`, or all."""
    labels = [str(c) for c in spec.label.classes]
    n = len(results)
    versions = sorted({r["model_version"] for r in results})
    whole = _all_int(spec)
    tensors = {
        "predict": lambda: output(
            "predict",
            "INT64" if whole else "BYTES",
            [n],
            [r["prediction"] if whole else str(r["prediction"]) for r in results],
        ),
        "predict_proba": lambda: (
            output(
                "predict_proba",
                "FP64",
                [n, len(labels)],
                [(r["probabilities"] or {}).get(label, 0.0) for r in results for label in labels],
            )
            | {"parameters": {"classes": orjson.dumps(spec.label.classes).decode()}}
        ),
        "model_version": lambda: output("model_version", "INT64", [n], [r["model_version"] for r in results]),
        "request_id": lambda: output("request_id", "BYTES", [n], [r["request_id"] for r in results]),
        EXPLANATION: lambda: output(
            EXPLANATION, "BYTES", [n], [orjson.dumps(r.get("explanation") or {}).decode() for r in results]
        ),
    }
    answer: dict[str, Any] = {"model_name": spec.name, "model_version": ",".join(map(str, versions))}
    if request_id is not None:
        answer["id"] = request_id
    answer["outputs"] = [tensors[name]() for name in (wanted or OUTPUTS)]
    return answer


def wanted_outputs(request: InferenceRequest) -> tuple[list[str] | None, list[str]]:
    """(the outputs asked for, None for all; those to send as binary data)."""
    everything_binary = (request.parameters or {}).get("binary_data_output") is True
    if not request.outputs:
        return None, list(OUTPUTS) if everything_binary else []
    names, binary = [], []
    for asked in request.outputs:
        if asked.name not in ASKABLE:
            raise TensorError(f"output {asked.name!r:.80} is not one of {', '.join(ASKABLE)}")
        names.append(asked.name)
        if (asked.parameters or {}).get("binary_data", everything_binary) is True:
            binary.append(asked.name)
    return names, binary


def openapi() -> dict[str, Any]:
    """The `/v2` API as an OpenAPI 3.1 document (`schemas/openapi/inference.json`)."""
    from driftloop.oip import ErrorBody, InferenceResponse, ServerMetadata

    schemas: dict[str, Any] = {}
    for contract in (InferenceRequest, InferenceResponse, ModelMetadata, ServerMetadata, ErrorBody):
        schema = contract.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[contract.__name__] = schema
    schemas["RequestOutput"]["properties"]["name"]["enum"] = list(ASKABLE)

    def answers(ok: str | None, *errors: int, description: str = "OK") -> dict[str, Any]:
        out: dict[str, Any] = {"200": {"description": description}}
        if ok is not None:
            out["200"]["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ok}"}}}
        why = {400: "Bad input.", 401: "No valid bearer token (when one is set).", 404: "Unknown model or "
               "version.", 405: "Wrong method.", 413: "Body too large.", 415: "Unknown content encoding.",
               503: "No version in service yet, or not ready."}  # fmt: skip
        for status in errors:
            error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
            out[str(status)] = {"description": why[status], "content": error}
        return out

    model = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    health = {"type": "object"}
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": {"summary": "The process is alive.", "responses": {
            "200": {"description": "Alive.", "content": {"application/json": {"schema": health}}}}}},
        "/v2/health/ready": {"get": {"summary": "Started, and every consumer keeps up.", "responses": {
            "200": {"description": "Ready.", "content": {"application/json": {"schema": health}}},
            **{k: v for k, v in answers(None, 503).items() if k != "200"}}}},
        "/v2": {"get": {"summary": "Server metadata.", "responses": answers("ServerMetadata", 401)}},
    }  # fmt: skip
    for prefix, parameters in (
        ("/v2/models/{model}", [model]),
        ("/v2/models/{model}/versions/{version}", [model, version]),
    ):
        paths[prefix] = {
            "get": {
                "summary": "Model metadata: inputs, outputs, versions in service.",
                "parameters": parameters,
                "responses": answers("ModelMetadata", 401, 404),
            }
        }
        paths[f"{prefix}/ready"] = {
            "get": {
                "summary": "Whether the model (version) serves.",
                "parameters": parameters,
                "responses": answers(None, 401, 404, 503, description="Ready."),
            }
        }
        paths[f"{prefix}/infer"] = {
            "post": {
                "summary": "Predictions for a batch of rows (one tensor per feature).",
                "parameters": parameters,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}
                    },
                },
                "responses": answers("InferenceResponse", 400, 401, 404, 413, 415, 503),
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "driftloop inference: Open Inference Protocol (v2)",
            "version": "2",
            "description": "Request/response serving beside the Kafka path (docs: serving over HTTP).",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
