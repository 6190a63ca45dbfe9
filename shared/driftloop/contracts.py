"""Every message that crosses a driftloop topic, as a frozen pydantic model.

Producers emit exactly these models; consumers ignore unknown fields, so a new optional field never
breaks an old consumer. `schemas/` is generated from this module (`make schemas`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar, cast

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

SCHEMA_VERSION = 1

# strict: JSON `true` is not a number (pydantic would read it as 1), and a number is not a string
FeatureValue = StrictFloat | StrictInt | StrictStr | None
Label = int | float | str


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """The same moment in UTC (naive input is taken as UTC); `OverflowError` when that falls
    outside the years 1-9999."""
    if moment.tzinfo is UTC:
        return moment
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


MAX_MESSAGE_BYTES = 1_000_000
M = TypeVar("M")
C = TypeVar("C", bound=BaseModel)


class InvalidInput(ValueError):
    """Input that breaks a contract or a spec; `reason` is machine-readable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse(
    model: type[M] | TypeAdapter[M], raw: bytes | None, known_models: Container[str] | None = None
) -> M:
    """Decode JSON bytes into a contract; raises `InvalidInput` with a machine-readable reason.

    With `known_models`, a message whose `model` field names none of them is refused too.
    """
    if not raw:
        raise InvalidInput("empty", "message has no body")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidInput("oversized", f"{len(raw)} bytes is over the {MAX_MESSAGE_BYTES} limit")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput("malformed_json", str(exc)) from exc
    if not isinstance(data, dict):
        raise InvalidInput("invalid_schema", f"expected a JSON object, got {type(data).__name__}")
    try:
        if isinstance(model, TypeAdapter):
            message = model.validate_python(data)
        else:
            message = cast(M, cast(type[BaseModel], model).model_validate(data))
    except ValidationError as exc:
        raise InvalidInput("invalid_schema", _short(exc)) from exc
    name = getattr(message, "model", None)
    if known_models is not None and name not in known_models:
        raise InvalidInput("unknown_model", f"no spec for model {name!r:.80}")
    return message


PLAIN_VALUES = frozenset({float, int, str, type(None)})  # feature values as JSON gives them


def json_object(raw: bytes | None) -> dict[str, Any] | None:
    """The JSON object a message within the size limit holds; None for anything else (which
    `parse` refuses with its reason). The hot paths' readers start here."""
    if not raw or len(raw) > MAX_MESSAGE_BYTES:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if type(data) is dict else None


def _short(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:5]
    )


class Message(BaseModel):
    """Base of every contract: immutable, tolerant of unknown fields, versioned."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = Field(default=SCHEMA_VERSION, description="Version of this message's schema.")


# ---------------------------------------------------------------- application-facing contracts


class Observation(Message):
    """An observation sent by an application or `driftloop replay` to `events.raw`."""

    event_id: str = Field(min_length=1, max_length=256, description="Unique id; duplicates are dropped.")
    model: str = Field(description="Name of the model spec this observation belongs to.")
    features: dict[str, FeatureValue] = Field(description="Raw feature values by name.")
    label: Label | None = Field(default=None, description="Ground truth, when known.")
    event_time: datetime | None = Field(
        default=None,
        description="When the observation happened (ISO-8601); if absent, when its record reached the bus.",
    )
    entity_id: str | None = Field(
        default=None, description="Entity the observation is about, for the online store."
    )


class PredictionRequest(Message):
    """An application's request on `predictions.requests`."""

    request_id: str = Field(min_length=1, max_length=256, description="Correlates the result.")
    model: str = Field(description="Name of the model to ask.")
    features: dict[str, FeatureValue] = Field(default_factory=dict, description="Raw feature values by name.")
    entity_id: str | None = Field(
        default=None, description="Entity whose stored features complete the request."
    )
    explain: bool = Field(
        default=False,
        description="Ask for the answer's explanation: each input's contribution to the predicted class's "
        "probability (costs a model run over the inputs' background; only for requests that ask).",
    )


class PredictionResult(Message):
    """Inference's answer on `predictions.results`: one per request."""

    request_id: str = Field(description="The request's id.")
    model: str = Field(description="Name of the model asked.")
    model_version: int = Field(description="Version that served the request; 0 when none did.")
    prediction: Label | None = Field(default=None, description="Predicted class or value.")
    probabilities: dict[str, float] | None = Field(
        default=None, description="Class probabilities by class label."
    )
    error: str | None = Field(default=None, description="Why the request could not be served.")
    features: dict[str, FeatureValue] | None = Field(
        default=None,
        description="The raw feature values served, when some came from the online store (entity "
        "requests); the monitor turns them into training rows when the label comes.",
    )
    explanation: dict[str, float] | None = Field(
        default=None,
        description="When the request asked (`explain`): each input's contribution to the predicted class's "
        "probability, by the version that answered (`driftloop.explain`).",
    )


def result_json(
    request_id: str,
    model: str,
    model_version: int,
    prediction: Label | None = None,
    probabilities: dict[str, float] | None = None,
    error: str | None = None,
    features: dict[str, Any] | None = None,
    explanation: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A `PredictionResult` as its JSON-ready dict, without building the model: the hot path's
    encoder. A unit test holds it equal to `PredictionResult(...).model_dump(mode="json")`."""
    return {
        "schema_version": SCHEMA_VERSION,
        "request_id": request_id,
        "model": model,
        "model_version": model_version,
        "prediction": prediction,
        "probabilities": probabilities,
        "error": error,
        "features": features,
        "explanation": explanation,
    }


def plain_request(data: dict[str, Any]) -> bool:
    """Whether a decoded `PredictionRequest` has every field of exactly its contract type (what
    the contract would accept unchanged): the hot paths read such requests without validating."""
    request_id, features, entity_id = data.get("request_id"), data.get("features", {}), data.get("entity_id")
    return (
        type(request_id) is str
        and 0 < len(request_id) <= 256
        and type(data.get("model")) is str
        and type(features) is dict
        and type(entity_id) in (str, type(None))
        and type(data.get("schema_version", 1)) is int
        and type(data.get("explain", False)) is bool
        and set(map(type, features.values())) <= PLAIN_VALUES
    )


_LABEL_TYPES = (int, float, str)  # `Label`, exactly


def plain_result(data: dict[str, Any]) -> bool:
    """Whether a decoded `PredictionResult` has every field of exactly its contract type (as the
    inference service writes them)."""
    probabilities, features = data.get("probabilities"), data.get("features")
    explanation = data.get("explanation")
    return (
        type(data.get("request_id")) is str
        and type(data.get("model")) is str
        and type(data.get("model_version")) is int
        and type(data.get("prediction")) in (*_LABEL_TYPES, type(None))
        and type(data.get("error")) in (str, type(None))
        and type(data.get("schema_version", 1)) is int
        and (
            probabilities is None
            or (type(probabilities) is dict and set(map(type, probabilities.values())) <= {float})
        )
        and (
            features is None or (type(features) is dict and set(map(type, features.values())) <= PLAIN_VALUES)
        )
        and (
            explanation is None
            or (type(explanation) is dict and set(map(type, explanation.values())) <= {float})
        )
    )


def plain_feedback(data: dict[str, Any]) -> bool:
    """Whether a decoded `Feedback` has every field of exactly its contract type."""
    request_id = data.get("request_id")
    return (
        type(request_id) is str
        and 0 < len(request_id) <= 256
        and type(data.get("model")) is str
        and type(data.get("label")) in _LABEL_TYPES
        and type(data.get("schema_version", 1)) is int
    )


def plain_observation(data: dict[str, Any], known_models: Container[str] | None = None) -> bool:
    """Whether a decoded `Observation` has every field of exactly its contract type (`event_time`
    still text: `driftloop.observations.read_observation` parses it as the contract does)."""
    event_id, features = data.get("event_id"), data.get("features")
    model = data.get("model")
    return (
        type(event_id) is str
        and 0 < len(event_id) <= 256
        and type(model) is str
        and (known_models is None or model in known_models)
        and type(features) is dict
        and set(map(type, features.values())) <= PLAIN_VALUES
        and type(data.get("label")) in PLAIN_VALUES
        and type(data.get("entity_id")) in (str, type(None))
        and type(data.get("schema_version", SCHEMA_VERSION)) is int
        and type(data.get("event_time")) in (str, type(None))
    )


def read(kind: type[C], raw: bytes | None, plain: Callable[[dict[str, Any]], bool]) -> C:
    """A contract from its bytes: when `plain` says the decoded fields are exactly the contract's
    types, built without validation (the hot paths' reader); anything else goes through `parse`,
    which accepts or refuses it with a reason. Property tests hold both paths equal."""
    message = _read_plain(kind, raw, plain)
    return parse(kind, raw) if message is None else message


def read_exact(kind: type[C], raw: bytes | None, plain: Callable[[dict[str, Any]], bool]) -> tuple[C, bytes]:
    """`read`, with bytes holding exactly the contract's values (the bytes given when they already
    do, re-encoded otherwise): what a service stores to read again later without validating."""
    message = _read_plain(kind, raw, plain)
    if message is not None:
        return message, raw or b""
    message = parse(kind, raw)
    return message, message.model_dump_json().encode()


def _read_plain(kind: type[C], raw: bytes | None, plain: Callable[[dict[str, Any]], bool]) -> C | None:
    data = json_object(raw)
    if data is None or not plain(data):
        return None
    fields = kind.model_fields
    return kind.model_construct(**{k: v for k, v in data.items() if k in fields})


class Feedback(Message):
    """Ground truth for an earlier request, on `predictions.feedback`."""

    request_id: str = Field(min_length=1, max_length=256, description="The request's id.")
    model: str = Field(description="Name of the model asked.")
    label: Label = Field(description="The true label.")


# ---------------------------------------------------------------- platform-internal contracts


class DeadLetter(Message):
    """A rejected input on `events.dlq`, with everything needed to inspect or replay it."""

    service: str = Field(description="Service that rejected the input.")
    reason: str = Field(description="Machine-readable reason, e.g. `malformed_json`.")
    detail: str = Field(description="Human-readable explanation.")
    source_topic: str = Field(description="Topic the input was read from.")
    source_partition: int = Field(description="Partition the input was read from.")
    source_offset: int = Field(description="Offset of the input in its partition.")
    original: str = Field(
        description="The original message bytes, base64-encoded (the first 64 KiB of larger ones)."
    )
    original_size: int = Field(default=0, description="Size of the original message in bytes.")
    original_key: str | None = Field(
        default=None, description="The original record's key, base64-encoded (absent when it had none)."
    )
    original_timestamp: int | None = Field(
        default=None,
        description="The original record's timestamp (ms since the epoch), as the broker gave it.",
    )
    original_headers: list[tuple[str, str]] = Field(
        default_factory=list,
        description="The original record's headers as (name, base64-encoded value) pairs, in order.",
    )
    error_type: str | None = Field(
        default=None,
        description="For reason `processing_failed`: the type of the exception the record raised when "
        "it was handled alone (the record passed validation but its handler failed on it).",
    )
    rejected_at: datetime = Field(default_factory=utcnow, description="When it was rejected.")


class FeatureRow(Message):
    """A computed feature vector on `features.computed`, labelled when the label is known."""

    event_id: str = Field(description="Id of the observation the row was computed from.")
    model: str = Field(description="Model spec whose feature definitions were applied.")
    entity_id: str | None = Field(default=None, description="Entity, when known.")
    event_time: datetime = Field(description="When the observation happened.")
    features: dict[str, float] = Field(description="Computed features by output name.")
    label: Label | None = Field(default=None, description="Ground truth, when known.")


def feature_row_json(
    event_id: str,
    model: str,
    entity_id: str | None,
    event_time: datetime,
    features: dict[str, float],
    label: Label | None,
) -> dict[str, Any]:
    """A `FeatureRow` as the dict orjson encodes to its JSON, without building the model: the hot
    path's encoder. `event_time` stays a datetime: orjson writes it as `isoformat()` does, ~8x
    faster. A unit test holds it equal to the contract."""
    return {
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id,
        "model": model,
        "entity_id": entity_id,
        "event_time": event_time,
        "features": features,
        "label": label,
    }


class TrainModel(Message):
    """Command on `training.requests`: train a candidate for a model."""

    command_id: str = Field(description="Unique id; a redelivered command is trained once.")
    model: str = Field(description="Model to train.")
    reason: str = Field(default="manual", description="Why: `manual`, `bootstrap`, `drift`, ...")
    since: datetime | None = Field(
        default=None, description="Train only on rows at or after this event time."
    )
    until: datetime | None = Field(default=None, description="Train only on rows before this event time.")
    dataset_version: str | None = Field(
        default=None, description="Train on exactly this stored dataset version (overrides the window)."
    )
    last_n: int | None = Field(default=None, ge=1, description="Train on at most the newest N rows.")
    min_rows: int | None = Field(
        default=None, ge=1, description="Wait (bounded) until the window holds this many rows."
    )
    requested_at: datetime = Field(default_factory=utcnow, description="When it was requested.")


class ArtifactRef(Message):
    """Where a model artifact lives and how to check it."""

    uri: str = Field(description="Location in the artifact store.")
    sha256: str = Field(description="Hex sha256 of the artifact bytes.")
    size_bytes: int = Field(description="Artifact size in bytes.")
    format: Literal["onnx"] = Field(default="onnx", description="Artifact format.")


class FeatureStats(Message):
    """Training reference statistics of one feature, for covariate-drift tests."""

    mean: float = Field(description="Mean.")
    std: float = Field(description="Standard deviation.")
    min: float = Field(description="Minimum.")
    max: float = Field(description="Maximum.")
    quantiles: list[float] = Field(description="Deciles 0.1 .. 0.9.")
    percentiles: list[float] = Field(
        default_factory=list, description="Quantiles at 0, 1, ..., 100 % (101 values; empty in old models)."
    )


class CalibrationTable(Message):
    """A version's calibration, fitted on its holdout at training time: the chance a prediction is
    right for each range of its top-class probability (`driftloop.estimation.Calibration`)."""

    edges: list[float] = Field(description="Top-class probabilities that separate the ranges (ascending).")
    accuracy: list[float] = Field(
        description="Holdout accuracy in each range, never falling as probability rises (one more "
        "than edges).",
    )
    rows: int = Field(description="Holdout rows it was fitted on.")
    overall: float | None = Field(default=None, description="Accuracy on the whole holdout.")


class AccuracyEstimate(Message):
    """A version's accuracy estimated from its served probabilities, before the labels come."""

    accuracy: float = Field(description="Expected accuracy of the recent predictions.")
    low: float = Field(description="Low end of the band the realised accuracy should fall in.")
    high: float = Field(description="High end of that band.")
    level: float = Field(description="Confidence of the band.")
    rows: int = Field(description="Predictions the estimate covers.")


class DatasetRef(Message):
    """A dataset version: the exact rows a model was trained and evaluated on, and how to re-read them.

    The training store is append-only and numbers rows in arrival order, so the same window read
    with the same `max_seq` always yields the same rows; `sha256` proves it.
    """

    version: str = Field(description="Dataset version id (a prefix of `sha256`).")
    since: datetime | None = Field(default=None, description="Window start (inclusive), if any.")
    until: datetime | None = Field(default=None, description="Window end (exclusive), if any.")
    last_n: int = Field(description="At most this many newest rows.")
    max_seq: int = Field(description="Only rows stored up to this sequence number.")
    rows: int = Field(description="Rows in the window.")
    train_rows: int = Field(description="Rows used for fitting.")
    holdout_rows: int = Field(description="Newest rows held out for evaluation.")
    first_event_time: datetime = Field(description="Oldest row's event time.")
    last_event_time: datetime = Field(description="Newest row's event time.")
    sha256: str = Field(description="Hash of the window's event ids and labels, in order.")
    files: list[str] = Field(
        default_factory=list,
        description="The store files and row ranges read, as `path:first-last` (the dataset's manifest).",
    )


class FeatureProfile(Message):
    """One input of a dataset version: its distribution, and how it compares with the data the
    champion of the time was trained on."""

    name: str = Field(description="Input name (a feature, an aggregate or a time part).")
    kind: Literal["numeric", "categorical"] = Field(description="Value type.")
    mean: float | None = Field(default=None, description="Mean (numeric, after the spec's transform).")
    std: float | None = Field(default=None, description="Standard deviation (numeric).")
    min: float | None = Field(default=None, description="Smallest value (numeric).")
    max: float | None = Field(default=None, description="Largest value (numeric).")
    edges: list[float] = Field(default_factory=list, description="Histogram bin edges (numeric).")
    counts: list[int] = Field(default_factory=list, description="Rows in each histogram bin (numeric).")
    shares: dict[str, float] = Field(
        default_factory=dict,
        description="Share of rows of each category, `__unknown__` for those the spec does not list "
        "(categorical).",
    )
    at_default: int | None = Field(
        default=None,
        description="Rows whose value is the input's default: absent in the observation (or sent as "
        "the default); None when the input has no default, or a transform hides it.",
    )
    out_of_range: int | None = Field(
        default=None,
        description="Rows outside the range of the champion's training data (numeric; None: no champion).",
    )
    unknown: int | None = Field(
        default=None, description="Rows of a category the spec does not list (categorical)."
    )
    shift: float | None = Field(
        default=None,
        description="PSI of this input against the champion's training data over its deciles "
        "(categorical: over its categories); None without a champion.",
    )


class DatasetProfile(Message):
    """A dataset version's profile, computed by the trainer as it builds the dataset: per input its
    distribution, rows at their default and out of range, the label balance, and the shift from
    the data the champion was trained on."""

    rows: int = Field(description="Rows profiled (the whole window: fitted and held out).")
    labels: dict[str, int] = Field(description="Rows of each label.")
    features: list[FeatureProfile] = Field(description="One per model input, in the spec's order.")
    compared_with: int | None = Field(
        default=None, description="The champion version whose training data the shifts are measured against."
    )


class PairedComparison(Message):
    """Candidate against champion on the same holdout rows, row by row, in the gate metric."""

    rows: int = Field(description="Holdout rows both models scored.")
    mean_difference: float = Field(
        description="Mean of candidate minus champion per row, higher is better (log loss: negated)."
    )
    std_error: float = Field(description="Standard error of that mean (sample std / sqrt(rows)).")


class ModelTrained(Message):
    """Event on `models.trained`: a candidate was fitted, converted and evaluated."""

    run_id: str = Field(description="Unique id of this training run.")
    command_id: str = Field(description="The TrainModel command that caused it.")
    reason: str = Field(description="The command's reason.")
    model: str = Field(description="Model name.")
    algorithm: str = Field(description="Algorithm name from the spec.")
    params: dict[str, Any] = Field(description="Hyper-parameters used.")
    classes: list[Label] = Field(description="Class labels, in probability-column order.")
    feature_names: list[str] = Field(description="Input columns of the artifact, in order.")
    artifact: ArtifactRef = Field(description="The ONNX artifact.")
    metric: str = Field(description="Name of the gate metric.")
    candidate_metrics: dict[str, float] = Field(description="Candidate's metrics on the holdout.")
    champion_version: int | None = Field(
        default=None, description="Champion evaluated on the same holdout, if any."
    )
    champion_metrics: dict[str, float] | None = Field(
        default=None, description="Champion's metrics on the same holdout."
    )
    comparison: PairedComparison | None = Field(
        default=None, description="Row-by-row comparison with the champion on the same holdout, if any."
    )
    parity_max_abs_diff: float = Field(description="Max |p_onnx - p_sklearn| on the holdout.")
    dataset: DatasetRef = Field(description="Rows used.")
    reference_stats: dict[str, FeatureStats] = Field(description="Per-feature training statistics.")
    prediction_shares: dict[str, float] = Field(
        default_factory=dict, description="Share of each predicted class on the holdout (prediction drift)."
    )
    calibration: CalibrationTable | None = Field(
        default=None, description="Holdout calibration of the top-class probability (estimated accuracy)."
    )
    importance: dict[str, float] = Field(
        default_factory=dict,
        description="Global importance of each input: the accuracy lost on the holdout when its columns are "
        "shuffled across rows (permutation importance on the ONNX model).",
    )
    profile: DatasetProfile | None = Field(
        default=None, description="The dataset version's profile (exploratory data analysis)."
    )
    code_version: str = Field(description="driftloop version that trained it.")
    spec_version: str | None = Field(
        default=None, description="Version of the model's spec it was trained with (`models.specs`)."
    )
    durations_s: dict[str, float] = Field(description="Seconds per phase: fit, convert, evaluate.")
    trained_at: datetime = Field(default_factory=utcnow, description="When training finished.")


class _Lifecycle(Message):
    model: str = Field(description="Model name.")
    version: int = Field(description="Version the event is about.")
    reason: str = Field(description="Why it happened.")
    command_id: str | None = Field(default=None, description="The command that caused it, if any.")
    at: datetime = Field(default_factory=utcnow, description="When it happened.")


class _ServeVersion(_Lifecycle):
    artifact: ArtifactRef = Field(description="Artifact to serve.")
    spec_version: str | None = Field(
        default=None,
        description="Version of the spec the model was trained with: requests are validated and encoded "
        "with it (None: the spec in force).",
    )
    classes: list[Label] = Field(description="Class labels, in probability-column order.")
    feature_names: list[str] = Field(description="Input columns of the artifact, in order.")
    previous_version: int | None = Field(default=None, description="Champion it replaced.")
    reference_stats: dict[str, FeatureStats] = Field(
        default_factory=dict, description="Training statistics per feature, for covariate-drift tests."
    )
    prediction_shares: dict[str, float] = Field(
        default_factory=dict, description="Share of each predicted class on the holdout (prediction drift)."
    )
    calibration: CalibrationTable | None = Field(
        default=None,
        description="Holdout calibration of the top-class probability: the monitor estimates the version's "
        "accuracy from what it serves before labels come (None: from the probabilities as served).",
    )
    data_until: datetime | None = Field(
        default=None,
        description="Event time of the newest row of the version's dataset: a later candidate is compared "
        "with it only on holdout rows after this (rows it never saw).",
    )


class ModelPromoted(_ServeVersion):
    """The version became champion and should serve."""

    event: Literal["ModelPromoted"] = Field(default="ModelPromoted", description="Event type.")


class ModelRolledBack(_ServeVersion):
    """The champion was rolled back to an earlier version, which should serve."""

    event: Literal["ModelRolledBack"] = Field(default="ModelRolledBack", description="Event type.")


class ModelRejected(_Lifecycle):
    """The version failed the promotion gate (or its artifact check)."""

    event: Literal["ModelRejected"] = Field(default="ModelRejected", description="Event type.")


class ModelAwaitingApproval(_ServeVersion):
    """The version passed the gate; the spec asks for approval, so meanwhile it is the challenger
    (served in shadow or canary mode, as the spec's `serving` section says)."""

    event: Literal["ModelAwaitingApproval"] = Field(
        default="ModelAwaitingApproval", description="Event type."
    )


class ModelTagged(_Lifecycle):
    """Free tags of the version were set (an empty value removes a tag)."""

    event: Literal["ModelTagged"] = Field(default="ModelTagged", description="Event type.")
    tags: dict[str, str] = Field(description="The version's tags after the change.")


class ModelCommandRefused(_Lifecycle):
    """A registry command could not be carried out; nothing changed."""

    event: Literal["ModelCommandRefused"] = Field(default="ModelCommandRefused", description="Event type.")


class ModelServingFailed(_Lifecycle):
    """A service could not load the version's artifact (missing, corrupted, not matching the spec);
    it keeps serving what it served before. Published by that service, not by the registry."""

    event: Literal["ModelServingFailed"] = Field(default="ModelServingFailed", description="Event type.")
    service: str = Field(description="The service that refused the artifact.")
    artifact: ArtifactRef = Field(description="The artifact it could not load.")


class ModelTrainingDeferred(_Lifecycle):
    """Training waits for rows before it can carry out a command (`version` 0: none made yet).
    Published by the training service, not by the registry."""

    event: Literal["ModelTrainingDeferred"] = Field(
        default="ModelTrainingDeferred", description="Event type."
    )
    rows: int = Field(description="Rows in the command's window now.")
    rows_needed: int = Field(description="Rows it waits for.")
    wait_s: float = Field(description="How long it waits at most before it gives up.")


class ModelTrainingFailed(_Lifecycle):
    """Training could not make a candidate for a command; nothing was registered (`version` 0).
    Published by the training service, not by the registry."""

    event: Literal["ModelTrainingFailed"] = Field(default="ModelTrainingFailed", description="Event type.")
    outcome: str = Field(
        description="Why: insufficient_data, unknown_dataset, dataset_mismatch, failed, or "
        "coalesced (a later command for the same model in the same batch trains instead)."
    )


LifecycleEvent = Annotated[
    ModelPromoted
    | ModelRejected
    | ModelRolledBack
    | ModelAwaitingApproval
    | ModelTagged
    | ModelCommandRefused
    | ModelServingFailed
    | ModelTrainingDeferred
    | ModelTrainingFailed,
    Field(discriminator="event"),
]
LIFECYCLE = TypeAdapter(LifecycleEvent)


class _RegistryCommand(Message):
    command_id: str = Field(min_length=1, max_length=128, description="Unique id; carried out once.")
    model: str = Field(description="Model name.")
    reason: str = Field(default="operator", description="Why, for the audit trail.")
    requested_at: datetime = Field(default_factory=utcnow, description="When it was requested.")


class PromoteModel(_RegistryCommand):
    """Command on `models.commands`: make a registered version champion, bypassing the gate."""

    command: Literal["PromoteModel"] = Field(default="PromoteModel", description="Command type.")
    version: int = Field(ge=1, description="Version to promote.")


class ApproveModel(_RegistryCommand):
    """Command on `models.commands`: promote a version that passed the gate and awaits approval."""

    command: Literal["ApproveModel"] = Field(default="ApproveModel", description="Command type.")
    version: int = Field(ge=1, description="Version to approve.")


class RollbackModel(_RegistryCommand):
    """Command on `models.commands`: put an earlier champion back in service."""

    command: Literal["RollbackModel"] = Field(default="RollbackModel", description="Command type.")
    to_version: int | None = Field(
        default=None, ge=1, description="Version to restore; the previous champion when absent."
    )


TAG_KEY = re.compile(r"[A-Za-z0-9._/:-]{1,64}")
TAG_VALUE_MAX = 256


def check_tag_key(key: str) -> str:
    """A tag key as given, or `ValueError`: 1 to 64 letters, digits or `. _ - / :` (ASCII)."""
    if not TAG_KEY.fullmatch(key):
        raise ValueError(f"tag key {key!r:.80} must be 1 to 64 letters, digits or . _ - / : (ASCII)")
    return key


def check_tag_value(value: str) -> str:
    """A tag value as given, or `ValueError`: at most 256 printable characters (`str.isprintable`:
    no control characters such as newlines or terminal escapes); empty removes the tag."""
    if len(value) > TAG_VALUE_MAX:
        raise ValueError(f"tag value is {len(value)} characters, more than {TAG_VALUE_MAX}")
    if not value.isprintable():
        raise ValueError(f"tag value {value!r:.80} has control or other non-printable characters")
    return value


Tags = Annotated[
    dict[Annotated[str, AfterValidator(check_tag_key)], Annotated[str, AfterValidator(check_tag_value)]],
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": f"^{TAG_KEY.pattern}$"},
            "additionalProperties": {"type": "string", "maxLength": TAG_VALUE_MAX},
        }
    ),
]


class TagModel(_RegistryCommand):
    """Command on `models.commands`: set free tags on a version (an empty value removes one)."""

    command: Literal["TagModel"] = Field(default="TagModel", description="Command type.")
    version: int = Field(ge=1, description="Version to tag.")
    tags: Tags = Field(
        description="Tags to set: keys of 1-64 letters, digits or `. _ - / :`; values of at most 256 "
        "printable characters (an empty value removes the tag)."
    )


class AnnounceModel(_RegistryCommand):
    """Command on `models.commands`: publish again the events that put the model's champion and
    challenger in place. A service that finds no champion after replaying `models.lifecycle` asks
    (the topic may have been lost or expired); the registry's own store is the source of truth."""

    command: Literal["AnnounceModel"] = Field(default="AnnounceModel", description="Command type.")


RegistryCommand = Annotated[
    PromoteModel | ApproveModel | RollbackModel | TagModel | AnnounceModel, Field(discriminator="command")
]
REGISTRY_COMMAND = TypeAdapter(RegistryCommand)


class ModelSpecApplied(Message):
    """Event on `models.specs` (key `<model>@<version>`): a version of a model's spec, in force for
    every service from this event on. Published by `driftloop apply`; each service checks it again."""

    event: Literal["ModelSpecApplied"] = Field(default="ModelSpecApplied", description="Event type.")
    model: str = Field(description="Model name (the spec's `name`).")
    version: str = Field(description="Content hash of the validated spec (`specbook.spec_version`).")
    spec: dict[str, Any] = Field(description="The spec, every field as validated (a `ModelSpec` in JSON).")
    source: str = Field(default="", description="Where it came from, e.g. the file name `apply` read.")
    applied_at: datetime = Field(default_factory=utcnow, description="When it was published.")


class ModelSpecRetired(Message):
    """Event on `models.specs` (key `<model>@retired`): the model is no longer validated, computed,
    trained, served or monitored; applying a spec of it again brings it back."""

    event: Literal["ModelSpecRetired"] = Field(default="ModelSpecRetired", description="Event type.")
    model: str = Field(description="Model name.")
    reason: str = Field(default="operator", description="Why, for the audit trail.")
    retired_at: datetime = Field(default_factory=utcnow, description="When it was published.")


SpecEvent = Annotated[ModelSpecApplied | ModelSpecRetired, Field(discriminator="event")]
SPEC_EVENT = TypeAdapter(SpecEvent)


class DriftDetected(Message):
    """Event on `monitor.drift`: a detector fired for a model's champion."""

    model: str = Field(description="Model name.")
    version: int = Field(description="Champion version being monitored.")
    detector: str = Field(description="Detector that fired, e.g. `adwin`.")
    kind: Literal["concept", "covariate", "prediction", "estimate", "slice"] = Field(
        description="What drifted: the concept (errors), a request feature, the predicted-class mix, "
        "the accuracy estimated from served probabilities (below its floor before labels come), or the "
        "gap between slices of an input (`feature`), the one behind named in `segment`."
    )
    samples_seen: int = Field(description="Labelled samples of this version seen when it fired.")
    change_point_sample: int = Field(description="Estimated first sample after the change.")
    change_point_time: datetime = Field(description="Event time of that sample.")
    detected_request_id: str = Field(description="Request whose feedback (or features) triggered it.")
    error_rate_before: float | None = Field(default=None, description="Error rate before the change.")
    error_rate_after: float | None = Field(default=None, description="Error rate after the change.")
    feature: str | None = Field(
        default=None, description="Feature that drifted (covariate drift), or the input sliced by (slice)."
    )
    segment: str | None = Field(
        default=None,
        description="The slice behind the others (slice drift): lowest accuracy, else lowest positive rate.",
    )
    statistic: float | None = Field(default=None, description="Detector statistic, e.g. the PSI.")
    estimate: AccuracyEstimate | None = Field(
        default=None,
        description="The champion's estimated accuracy when it fired (covariate, prediction and estimate "
        "kinds): inputs that moved with a steady estimate moved where the model is still sure.",
    )
    at: datetime = Field(default_factory=utcnow, description="When it fired.")


CONTRACTS: dict[str, type[Message]] = {
    m.__name__: m
    for m in (
        Observation,
        PredictionRequest,
        PredictionResult,
        Feedback,
        DeadLetter,
        FeatureRow,
        TrainModel,
        ModelTrained,
        ModelPromoted,
        ModelRejected,
        ModelRolledBack,
        ModelAwaitingApproval,
        ModelTagged,
        ModelCommandRefused,
        ModelServingFailed,
        ModelTrainingDeferred,
        ModelTrainingFailed,
        PromoteModel,
        ApproveModel,
        RollbackModel,
        TagModel,
        AnnounceModel,
        DriftDetected,
        ModelSpecApplied,
        ModelSpecRetired,
    )
}

# The hot paths' codecs, beside their contracts. A fast reader says when decoded fields are exactly
# the contract's types, so they are taken without validating (`read`); a fast writer builds the
# contract's JSON-ready dict without building the model. `tests/unit/test_codecs.py` holds every
# entry to its contract with generated input, and fails on an entry it has no generator for.
FAST_READERS: dict[type[Message], Callable[..., bool]] = {
    Observation: plain_observation,
    PredictionRequest: plain_request,
    PredictionResult: plain_result,
    Feedback: plain_feedback,
}
FAST_WRITERS: dict[type[Message], Callable[..., dict[str, Any]]] = {
    PredictionResult: result_json,
    FeatureRow: feature_row_json,
}
