"""Security against real parts: a service talks to a redis-server that requires TLS and AUTH, with
its secrets from settings, and neither its logs nor its metrics ever show them; every Kafka client
of the services speaks TLS to a broker that only accepts TLS."""

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from driftloop.localstack import free_port, wait_port

SECRET = "s3cret-redis-pa55"
KAFKA_SECRET = "s3cret-kafka-pa55"


def _certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1 and its key; the certificate is its own CA."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
         str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_redis(tmp_path):
    """A redis-server on TLS only, requiring a password; (rediss URL, CA file)."""
    cert, key = _certificate(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
         "--tls-auth-clients", "no", "--requirepass", SECRET, "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port, 20, "redis (TLS)")
    yield f"rediss://127.0.0.1:{port}/0", cert
    proc.kill()
    proc.wait()


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_service_uses_redis_over_tls_with_auth_and_never_shows_its_secrets(
    kafka_bootstrap, tls_redis, tmp_path
):
    url, ca = tls_redis
    port = free_port()
    log = tmp_path / "registry.log"
    env = {
        **os.environ,
        "DRIFTLOOP_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "DRIFTLOOP_REDIS_URL": url,
        "DRIFTLOOP_REDIS_PASSWORD": SECRET,
        "DRIFTLOOP_REDIS_CA_FILE": str(ca),
        # set but unused on this PLAINTEXT broker: it must not leak either
        "DRIFTLOOP_KAFKA_SASL_USERNAME": "driftloop",
        "DRIFTLOOP_KAFKA_SASL_PASSWORD": KAFKA_SECRET,
        "DRIFTLOOP_HTTP_PORT": str(port),
        "DRIFTLOOP_LOG_LEVEL": "DEBUG",
        "DRIFTLOOP_DATA_DIR": str(tmp_path / "data"),
        "DRIFTLOOP_OBJECT_STORE_URL": str(tmp_path / "objects"),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "driftloop_registry.app"], env=env, stdout=out, stderr=out
        )
    try:
        wait_port(port, 30, "registry")
        deadline = time.monotonic() + 30
        while _get(port, "/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        status, body = _get(port, "/v1/models")  # read from Redis: over TLS, authenticated
        metrics = _get(port, "/metrics")[1]
    finally:
        proc.terminate()
        proc.wait(15)
    assert status == 200, body
    logs = log.read_text()
    assert "DEBUG" in logs  # the most talkative level was on
    for secret in (SECRET, KAFKA_SECRET):
        assert secret not in logs and secret not in metrics and secret not in body


def test_without_the_password_redis_refuses(tls_redis):
    import redis

    url, ca = tls_redis
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(url, ssl_ca_certs=str(ca)).ping()
    assert redis.Redis.from_url(url, ssl_ca_certs=str(ca), password=SECRET).ping()


@pytest.fixture
def tls_kafka(tmp_path):
    """The broker behind a TLS-only listener: tansu 0.6 has no working TLS listener, so stunnel
    terminates TLS in front of it, and tansu advertises the TLS address; (bootstrap, CA file)."""
    from driftloop.localstack import broker_command

    cert, key = _certificate(tmp_path)
    inner, outer = free_port(), free_port()
    command = broker_command(inner)
    command[command.index("--advertised-listener-url") + 1] = f"tcp://127.0.0.1:{outer}"
    broker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = tmp_path / "stunnel.conf"
    config.write_text(
        f"foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{outer}\n"
        f"connect = 127.0.0.1:{inner}\ncert = {cert}\nkey = {key}\n"
    )
    tls = subprocess.Popen(["stunnel", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(inner, 20, "broker")
    wait_port(outer, 20, "stunnel")
    yield f"127.0.0.1:{outer}", cert
    for proc in (tls, broker):
        proc.kill()
        proc.wait()


async def test_every_kafka_client_of_a_service_speaks_tls_from_settings(
    tls_kafka, redis_url, topics, tmp_path
):
    """Ingest and the registry (each: stream loop consumers and producers, admin, the `/readyz`
    broker check) run against the TLS-only listener, with a lifecycle follower (group-less
    reader, and the producer that asks the registry): an observation goes through, a candidate is
    promoted and the follower sees it. A client without TLS gets nowhere on the same address."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    from driftloop.artifacts import ArtifactStore
    from driftloop.connections import kafka_options
    from driftloop.contracts import ModelPromoted, Observation
    from driftloop.fastpath import BatchSender, Output
    from driftloop.kafka import encode
    from driftloop.lifecycle import follow_models
    from driftloop.specbook import apply_specs
    from driftloop_ingest.app import create_app as ingest_app
    from driftloop_ingest.settings import IngestSettings
    from driftloop_registry.app import create_app as registry_app
    from driftloop_registry.settings import RegistrySettings
    from tests.conftest import ROOT, wait_for
    from tests.helpers import collect, model_trained

    bootstrap, ca = tls_kafka
    common = {"kafka_bootstrap": bootstrap, "kafka_security_protocol": "SSL", "kafka_ca_file": ca,
              "topics": topics, "redis_url": redis_url,
              "object_store_url": str(tmp_path / "objects")}  # fmt: skip
    ingest = IngestSettings(**common, offline_dir=tmp_path / "offline")
    registry = RegistrySettings(**common, data_dir=tmp_path / "registry", http_port=0)
    await apply_specs(ingest, ROOT / "models")  # over TLS too
    options = kafka_options(ingest)
    apps = [ingest_app(ingest), registry_app(registry)]
    promoted: list = []

    async def seen(event) -> None:
        if isinstance(event, ModelPromoted):
            promoted.append(event)

    follower = follow_models(ingest, seen, ["sea"])
    for app in apps:
        await app.start()
    try:
        await follower.start()
        artifact = await ArtifactStore.at(tmp_path / "objects").put(b"an onnx model")
        observation = Observation(
            event_id="tls-1", model="sea", features={"x0": 1.0, "x1": 2.0, "x2": 3.0}, label=1
        )
        trained = model_trained(artifact=artifact, names=("x0", "x1", "x2"), accuracy=0.9)
        sender = await BatchSender.connect(bootstrap, "test", **options)
        await sender.send([Output(topics.events_raw, b"e", encode(observation)),
                           Output(topics.models_trained, None, encode(trained))])  # fmt: skip
        await sender.stop()
        validated = await collect(bootstrap, topics.events_validated, Observation, 1, options=options)
        await wait_for(lambda: bool(promoted), 30, "the promotion, over TLS")
    finally:
        await follower.stop()
        for app in reversed(apps):
            await app.stop()
    assert [o.event_id for o in validated] == ["tls-1"]
    assert promoted[0].version == 1

    plain = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    with pytest.raises(Exception):  # noqa: B017 - whichever error: the point is it never gets in
        await asyncio.wait_for(plain.start(), 10)
    await plain.close()
