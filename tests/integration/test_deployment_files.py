"""docker-compose.yml, the Dockerfile and the Prometheus rules, checked by the real tools
(`docker-compose config`, `promtool`) and against the code they deploy."""

import importlib
import os
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

from driftloop.localstack import SERVICES
from tests.conftest import ROOT


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make install`")
    return path


SECRETS = ("GRAFANA_ADMIN_PASSWORD", "KAFKA_PASSWORD", "REDIS_PASSWORD")


def _compose(
    grafana_password: str | None, tmp_path, files=("docker-compose.yml",), **secrets: str
) -> subprocess.CompletedProcess:
    empty_env_file = tmp_path / "empty.env"  # ignore a developer's own .env
    empty_env_file.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    if grafana_password is not None:
        env["GRAFANA_ADMIN_PASSWORD"] = grafana_password
    env.update(secrets)
    return subprocess.run(
        [
            _tool("docker-compose"),
            "--env-file",
            str(empty_env_file),
            *[arg for name in files for arg in ("-f", str(ROOT / name))],
            "config",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )


def test_compose_refuses_to_start_without_required_secrets(tmp_path):
    result = _compose(None, tmp_path)
    assert result.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in result.stderr


def test_compose_names_every_service_with_a_real_target_entry_point_and_settings(tmp_path):
    result = _compose("x", tmp_path)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)["services"]
    dockerfile = (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    assert {"kafka", "redis", "prometheus", "grafana", *SERVICES} <= set(config)
    for service in SERVICES:
        entry = config[service]
        target = entry["build"]["target"]
        stage = re.search(rf"FROM base AS {target}\n(.*?)(?:\n\n|\Z)", dockerfile, re.S)
        assert stage, f"no Dockerfile target for {service}"
        assert f"/app/.venv/bin/driftloop-{service}" in stage.group(1)
        project = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())
        module, func = project["project"]["scripts"][f"driftloop-{service}"].split(":")
        assert callable(getattr(importlib.import_module(module), func))
        settings_module = importlib.import_module(f"driftloop_{service}.settings")
        settings_cls = next(
            v for k, v in vars(settings_module).items() if k.endswith("Settings") and k != "ServiceSettings"
        )
        for variable in entry["environment"]:
            field = variable.removeprefix("DRIFTLOOP_").lower().split("__")[0]
            assert field in settings_cls.model_fields, f"{service}: {variable} is not a setting"
        assert entry["healthcheck"]["test"]
        assert entry["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_prometheus_alert_rules_are_valid():
    result = subprocess.run(
        [_tool("promtool"), "check", "rules", str(ROOT / "infra" / "prometheus" / "alerts.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_alerts_fire_on_trouble_and_stay_silent_otherwise():
    result = subprocess.run(
        [_tool("promtool"), "test", "rules", str(ROOT / "infra" / "prometheus" / "alerts.test.yml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


SECURE = ("docker-compose.yml", "docker-compose.secure.yml")


def test_the_secure_compose_variant_gives_every_service_valid_tls_and_sasl_settings(tmp_path):
    refused = _compose("g", tmp_path, SECURE, REDIS_PASSWORD="r")
    assert refused.returncode != 0 and "KAFKA_PASSWORD" in refused.stderr
    result = _compose("g", tmp_path, SECURE, KAFKA_PASSWORD="k-secret", REDIS_PASSWORD="r-secret")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)["services"]
    assert "SASL_SSL://kafka:9094" in config["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "--tls-port 6380" in " ".join(config["redis"]["command"])
    for service in SERVICES:
        env = config[service]["environment"]
        settings_cls = next(
            v
            for k, v in vars(importlib.import_module(f"driftloop_{service}.settings")).items()
            if k.endswith("Settings") and k != "ServiceSettings"
        )
        fields = {k.removeprefix("DRIFTLOOP_").lower(): v for k, v in env.items() if "__" not in k}
        settings = settings_cls.model_validate(fields)  # the model validator checks completeness
        assert settings.kafka_security_protocol == "SASL_SSL" and settings.redis_url.startswith("rediss://")
        assert settings.kafka_sasl_password.get_secret_value() == "k-secret"
        assert "k-secret" not in repr(settings) and "r-secret" not in repr(settings)
        assert "/secrets/ca.pem" in " ".join(str(v) for v in config[service]["volumes"])


def test_the_certificate_script_makes_a_ca_and_host_certificates(tmp_path):
    subprocess.run([str(ROOT / "infra" / "secure" / "make-certs.sh"), str(tmp_path)], check=True,
                   capture_output=True)  # fmt: skip
    for host in ("kafka", "redis"):
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / f"{host}.pem")],
            capture_output=True, text=True,
        )  # fmt: skip
        assert verify.returncode == 0, verify.stderr
        text = subprocess.run(["openssl", "x509", "-in", str(tmp_path / f"{host}.pem"), "-noout", "-text"],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert f"DNS:{host}" in text
    assert "PRIVATE KEY" in (tmp_path / "kafka-keystore.pem").read_text()
