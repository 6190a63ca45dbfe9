"""Security against real parts: a service talks to a redis-server that requires TLS and AUTH, with
its secrets from settings, and neither its logs nor its metrics ever show them."""

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from driftloop.localstack import free_port, wait_port

SECRET = "s3cret-redis-pa55"
KAFKA_SECRET = "s3cret-kafka-pa55"


@pytest.fixture
def tls_redis(tmp_path):
    """A redis-server on TLS only, requiring a password; (rediss URL, CA file)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
         str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
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
        "DRIFTLOOP_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
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
