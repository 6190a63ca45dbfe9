"""Test helpers: small real data and a real ONNX model built through the training code."""

from __future__ import annotations

import contextlib
import itertools
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import ConsumerRecord
from hypothesis import strategies as st

from driftloop import datasets
from driftloop.features import FeatureSet, check_features
from driftloop.fitting import build_estimator
from driftloop.settings import ServiceSettings, Topics
from driftloop.spec import AlgorithmSpec, ModelSpec
from driftloop.specbook import apply_specs
from driftloop_training.adapters import convert
from tests.oracles import matrix


def sea_rows(n: int, variant: int = 0, seed: int = 1) -> list[tuple[dict, int]]:
    return list(itertools.islice(datasets.sea(variant, seed), n))


def sea_onnx(
    spec: ModelSpec,
    n: int = 600,
    algorithm: str = "logistic_regression",
    variant: int = 0,
    shuffle_labels: bool = False,
) -> tuple[bytes, list, list[str]]:
    """Fit `algorithm` on SEA rows and convert it: (onnx bytes, classes, feature names)."""
    return fitted_onnx(spec, sea_rows(n, variant), algorithm, shuffle_labels)


def fitted_onnx(
    spec: ModelSpec, rows: Sequence[tuple[dict, Any]], algorithm: str = "logistic_regression",
    shuffle_labels: bool = False,
) -> tuple[bytes, list, list[str]]:  # fmt: skip
    """Fit `algorithm` on `rows` of the spec's features and convert it: (onnx bytes, classes,
    feature names)."""
    feature_set = FeatureSet(spec)
    X = matrix(feature_set, [check_features(spec, x) for x, _ in rows])
    y = np.array([label for _, label in rows])
    if shuffle_labels:
        y = np.random.default_rng(0).permutation(y)
    estimator = build_estimator(AlgorithmSpec(name=algorithm), seed=0)
    estimator.fit(X, y)
    return convert(estimator, X.shape[1]), [int(c) for c in estimator.classes_], feature_set.names


async def collect(bootstrap: str, topic: str, model_cls, count: int, timeout: float = 20.0,
                  until=None, options=None) -> list:  # fmt: skip
    """Read `topic` from its start until `count` messages parse as `model_cls`, one satisfies
    `until`, or the timeout passes (`options`: `driftloop.connections.kafka_options`)."""
    import asyncio
    import time

    from driftloop.kafka import read_from_start

    parse = getattr(model_cls, "model_validate_json", None) or model_cls.validate_json
    consumer = await read_from_start(bootstrap, topic, options=options)
    found = []
    deadline = time.monotonic() + timeout
    try:
        while (
            len(found) < count
            and time.monotonic() < deadline
            and not (until and any(until(m) for m in found))
        ):
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                found += [parse(r.value) for r in records]
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return found


def model_trained(
    run_id="run",
    artifact=None,
    classes=(0, 1),
    names=("x0",),
    accuracy=0.85,
    champion=None,
    parity=1e-7,
    model="sea",
    holdout=600,
    comparison=None,
):
    """A `ModelTrained` event with the given gate inputs and placeholder lineage; `comparison`:
    (mean difference, standard error) of the paired comparison with the champion."""
    from datetime import UTC, datetime

    from driftloop.contracts import ArtifactRef, DatasetRef, ModelTrained, PairedComparison

    moment = datetime(2026, 1, 1, tzinfo=UTC)
    return ModelTrained(
        run_id=run_id, command_id=run_id, reason="manual", model=model,
        algorithm="logistic_regression", params={}, classes=list(classes), feature_names=list(names),
        artifact=artifact or ArtifactRef(uri="u", sha256="0" * 64, size_bytes=1),
        metric="accuracy", candidate_metrics={"accuracy": accuracy},
        champion_version=1 if champion is not None else None,
        champion_metrics={"accuracy": champion} if champion is not None else None,
        parity_max_abs_diff=parity,
        comparison=None if comparison is None else PairedComparison(
            rows=holdout, mean_difference=comparison[0], std_error=comparison[1]),
        dataset=DatasetRef(version="d", last_n=3000, max_seq=3000, rows=3000, train_rows=3000 - holdout,
                           holdout_rows=holdout, first_event_time=moment, last_event_time=moment,
                           sha256="d" * 64),
        reference_stats={}, code_version="test", durations_s={},
    )  # fmt: skip


async def by_request_id(
    bootstrap: str, topic: str, ids, timeout: float = 30.0, settle_s: float = 0.5
) -> dict:
    """{request_id: [(message as a dict, its Kafka headers), ...]} for `ids`, read from the topic's
    start until every id is there, then `settle_s` more (a second answer would show), or the
    timeout."""
    import asyncio
    import collections

    import orjson

    from driftloop.kafka import read_from_start

    wanted, found = set(ids), collections.defaultdict(list)
    consumer = await read_from_start(bootstrap, topic)
    loop = asyncio.get_running_loop()
    deadline, settle = loop.time() + timeout, None
    try:
        while loop.time() < (settle or deadline):
            for records in (await consumer.getmany(timeout_ms=100)).values():
                for record in records:
                    data = orjson.loads(record.value)
                    if data.get("request_id") in wanted:
                        found[data["request_id"]].append((data, tuple(record.headers)))
            if settle is None and wanted <= found.keys():
                settle = loop.time() + settle_s
    finally:
        await consumer.stop()
    return found


async def served_versions(client, model: str, rows, expected: set[int], timeout: float = 15.0) -> set[int]:
    """Versions that serve `rows`, polled until they equal `expected` (or the timeout passes)."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        versions = {r.model_version for r in await client.predict_many(model, rows)}
        if versions == expected or time.monotonic() > deadline:
            return versions
        await asyncio.sleep(0.1)


# any JSON value, small
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def metric(stack: Any, service: str, name: str, **labels: str) -> float:
    """A service's metric on a running `localstack.Stack`, summed over the series that carry `labels`."""
    import httpx

    total = 0.0
    for line in httpx.get(f"{stack.url(service)}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def records(topic: str, values: Sequence[bytes | None], partition: int = 0) -> list[ConsumerRecord]:
    """Consumer records as a hot-path handler receives them from the broker."""
    return [
        ConsumerRecord(topic, partition, offset, 0, 0, None, value, None, 0, len(value or b""), ())
        for offset, value in enumerate(values)
    ]


class Publisher:
    """A test's producer of contracts (aiokafka, acks=all), sending as an application does."""

    def __init__(self, bootstrap: str) -> None:
        from driftloop.client import make_producer

        self.producer = make_producer(bootstrap)

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def publish(self, topic: str, messages: Sequence) -> None:
        """Send contracts to `topic` and wait for every acknowledgement."""
        from driftloop.client import send_all

        await send_all(self.producer, topic, messages)


class OtlpReceiver:
    """A trace collector's OTLP/HTTP endpoint (`POST /v1/traces`, protobuf) on a thread of its own:
    the spans it was sent, as decoded protobuf."""

    def __init__(self) -> None:
        import http.server
        import threading

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        received = self.spans = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                export = ExportTraceServiceRequest.FromString(body)
                received.extend(
                    span for rs in export.resource_spans for ss in rs.scope_spans for span in ss.spans
                )
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


async def apply_models(bootstrap: str, topics: Topics, directory: Path | None = None) -> None:
    """Put spec files in force on the test's `models.specs` topic (`driftloop apply`), as a
    deployment does before its services start; the repository's `models/` by default."""
    from tests.conftest import ROOT

    settings = ServiceSettings(kafka_bootstrap=bootstrap, topics=topics)
    await apply_specs(settings, directory or ROOT / "models")


def s3_settings_for(endpoint: str, bucket: str, secret: str = "test-secret") -> dict[str, Any]:
    """Object store settings of a bucket on a test S3 server (short timeout: outages are tested)."""
    return {
        "object_store_url": f"s3://{bucket}/driftloop",
        "object_store_endpoint": endpoint,
        "object_store_region": "us-east-1",
        "object_store_access_key_id": "test",
        "object_store_secret_access_key": secret,
        "object_store_allow_http": True,
        "object_store_timeout_s": 2.0,
    }


@contextlib.contextmanager
def own_s3_server(bucket: str, secret: str = "test-secret") -> Iterator[tuple[subprocess.Popen[bytes], dict]]:
    """An S3-protocol server of the test's own (to stop), with a bucket: (process, its settings)."""
    from driftloop.localstack import create_bucket, free_port, s3_command, wait_port

    port = free_port()
    server = subprocess.Popen(s3_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 30, "S3 server")
        create_bucket(f"http://127.0.0.1:{port}", bucket)
        yield server, s3_settings_for(f"http://127.0.0.1:{port}", bucket, secret)
    finally:
        server.send_signal(signal.SIGCONT)  # a test may have stopped it
        server.kill()
        server.wait()
