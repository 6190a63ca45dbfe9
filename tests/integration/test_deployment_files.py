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


def _compose(grafana_password: str | None, tmp_path) -> subprocess.CompletedProcess:
    empty_env_file = tmp_path / "empty.env"  # ignore a developer's own .env
    empty_env_file.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "GRAFANA_ADMIN_PASSWORD"}
    if grafana_password is not None:
        env["GRAFANA_ADMIN_PASSWORD"] = grafana_password
    return subprocess.run(
        [
            _tool("docker-compose"),
            "--env-file",
            str(empty_env_file),
            "-f",
            str(ROOT / "docker-compose.yml"),
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
