"""docker-compose.yml, the Dockerfile and the Prometheus rules, checked by the real tools
(`docker-compose config`, `promtool`) and against the code they deploy; the Dockerfile (no Docker
engine here) by replaying what its instructions do to the environment, directories and owners."""

import importlib
import os
import re
import shlex
import shutil
import subprocess
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
import yaml

from driftloop.localstack import SERVICES
from driftloop.settings import service_settings
from tests.conftest import ROOT


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make install`")
    return path


SECRETS = ("GRAFANA_ADMIN_PASSWORD", "KAFKA_PASSWORD", "REDIS_PASSWORD", "MINIO_ROOT_PASSWORD")
SECURE = ("docker-compose.yml", "docker-compose.secure.yml")


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
    result = _compose(None, tmp_path, MINIO_ROOT_PASSWORD="m")
    assert result.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in result.stderr


def test_compose_names_every_service_with_a_real_target_entry_point_and_settings(tmp_path):
    result = _compose("x", tmp_path, MINIO_ROOT_PASSWORD="m")
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
        settings_cls = service_settings(service)
        for variable in entry["environment"]:
            field = variable.removeprefix("DRIFTLOOP_").lower().split("__")[0]
            assert field in settings_cls.model_fields, f"{service}: {variable} is not a setting"
        assert entry["healthcheck"]["test"]
        assert entry["depends_on"]["kafka"]["condition"] == "service_healthy"


@pytest.mark.parametrize("files", [("docker-compose.yml",), SECURE], ids=["plain", "secure"])
def test_no_two_services_share_a_volume_and_artifacts_go_through_the_object_store(files, tmp_path):
    result = _compose("g", tmp_path, files, KAFKA_PASSWORD="k", REDIS_PASSWORD="r", MINIO_ROOT_PASSWORD="m")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)["services"]
    owners: dict[str, list[str]] = {}
    for name, entry in config.items():
        for volume in entry.get("volumes", []):
            if isinstance(volume, str):  # source:target[:mode]
                source, _, rest = volume.partition(":")
                read_only = rest.endswith(":ro")
            else:
                source, read_only = volume["source"], volume.get("read_only", False)
            if not read_only:
                owners.setdefault(source, []).append(name)
    shared = {source: names for source, names in owners.items() if len(names) > 1}
    assert not shared, f"written by more than one service: {shared}"
    specs = config["specs"]  # model specs reach the services through models.specs, not the images
    assert specs["command"][-2:] == ["apply", "/models"] and specs["volumes"][0].endswith("/models:ro")
    assert "COPY models" not in (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    for service in SERVICES:
        assert config[service]["depends_on"]["specs"]["condition"] == "service_completed_successfully"
        env = config[service]["environment"]
        assert env["DRIFTLOOP_OBJECT_STORE_URL"].startswith("s3://")
        assert env["DRIFTLOOP_OBJECT_STORE_ENDPOINT"] == "http://minio:9000"
        assert config[service]["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
    refused = _compose("g", tmp_path, files, KAFKA_PASSWORD="k", REDIS_PASSWORD="r")
    assert refused.returncode != 0 and "MINIO_ROOT_PASSWORD" in refused.stderr


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


def test_the_secure_compose_variant_gives_every_service_valid_tls_and_sasl_settings(tmp_path):
    refused = _compose("g", tmp_path, SECURE, REDIS_PASSWORD="r", MINIO_ROOT_PASSWORD="m")
    assert refused.returncode != 0 and "KAFKA_PASSWORD" in refused.stderr
    result = _compose("g", tmp_path, SECURE, KAFKA_PASSWORD="k-secret", REDIS_PASSWORD="r-secret",
                      MINIO_ROOT_PASSWORD="m")  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)["services"]
    assert "SASL_SSL://kafka:9094" in config["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "--tls-port 6380" in " ".join(config["redis"]["command"])
    for service in SERVICES:
        env = config[service]["environment"]
        settings_cls = service_settings(service)
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


APP, DATA = PurePosixPath("/app"), PurePosixPath("/data")
# The Path settings a service only reads; every other one is a place it writes to.
READ_ONLY = {"kafka_ca_file", "redis_ca_file"}


@dataclass
class Stage:
    """What a Dockerfile stage leaves: its env, the directories its RUNs made and their owners."""

    env: dict[str, str] = field(default_factory=dict)
    owners: dict[PurePosixPath, str] = field(default_factory=dict)
    made: set[PurePosixPath] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    user: str = "root"


def _run(stage: Stage, command: list[str]) -> None:
    """Replay the parts of one shell command that make directories, owners and users."""
    name, args = command[0], [a for a in command[1:] if not a.startswith("-")]
    flags = {a for a in command[1:] if a.startswith("-")}
    if name == "useradd":
        stage.users.add(command[-1])
    elif name == "mkdir":
        for arg in args:
            path = PurePosixPath(arg)
            for each in [*reversed(path.parents), path] if "-p" in flags else [path]:
                stage.owners.setdefault(each, stage.user)
            stage.made.add(path)
    elif name == "chown":
        owner, targets = args[0].split(":")[0], [PurePosixPath(a) for a in args[1:]]
        for path in list(stage.owners):
            if any(path == t or ("-R" in flags and t in path.parents) for t in targets):
                stage.owners[path] = owner


def _dockerfile_stages() -> dict[str, Stage]:
    """Every stage of the Dockerfile, each with what it inherits from the stage it starts from."""
    text = (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    stages: dict[str, Stage] = {}
    stage = Stage()
    for instruction in "\n".join(lines).replace("\\\n", " ").splitlines():
        keyword, _, rest = instruction.strip().partition(" ")
        if keyword == "FROM":
            parent, _, name = rest.partition(" AS ")
            inherited = stages.get(parent.strip())
            stage = Stage(dict(inherited.env), dict(inherited.owners), set(inherited.made),
                          set(inherited.users), inherited.user) if inherited else Stage()  # fmt: skip
            stages[name.strip() or parent.strip()] = stage
        elif keyword == "ENV":
            words = shlex.split(rest)
            pairs = [w.split("=", 1) for w in words] if "=" in words[0] else [[words[0], " ".join(words[1:])]]
            stage.env.update({k: v for k, v in pairs})
        elif keyword == "RUN":
            for command in re.split(r"&&|;", rest):
                if command.strip():
                    _run(stage, shlex.split(command))
        elif keyword == "USER":
            stage.user = rest.strip().split(":")[0]
        elif keyword == "WORKDIR":
            stage.owners.setdefault(PurePosixPath(rest.strip()), stage.user)
    return stages


def _path_settings(settings_cls: type) -> list[str]:
    """The settings typed `Path` (or `Path | None`)."""

    def is_path(annotation: object) -> bool:
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
            return any(is_path(a) for a in typing.get_args(annotation))
        return annotation is Path

    return [name for name, info in settings_cls.model_fields.items() if is_path(info.annotation)]


def _settings_under(settings_cls: type, env: dict[str, str], monkeypatch):
    """The service's settings as it builds them from this environment, and nothing else."""
    for name in [k for k in os.environ if k.startswith("DRIFTLOOP_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("DRIFTLOOP_"):
            monkeypatch.setenv(name, str(value))
    return settings_cls()


def test_every_directory_a_service_writes_is_absolute_under_data_and_owned_by_its_user(monkeypatch):
    stages = _dockerfile_stages()
    for service in SERVICES:
        stage, settings_cls = stages[service], service_settings(service)
        for variable in stage.env:
            if variable.startswith("DRIFTLOOP_"):
                field_name = variable.removeprefix("DRIFTLOOP_").lower().split("__")[0]
                assert field_name in settings_cls.model_fields, f"{service}: {variable} is not a setting"
        assert stage.user in stage.users and stage.user != "root", f"{service} runs as {stage.user}"
        settings = _settings_under(settings_cls, stage.env, monkeypatch)
        paths = _path_settings(settings_cls)
        assert "data_dir" in paths
        objects = PurePosixPath(settings.object_store_url)  # a directory here (s3:// in a deployment)
        assert DATA in objects.parents and stage.owners.get(objects) == stage.user, f"{service}: {objects}"
        for name in paths:
            value = getattr(settings, name)
            if name in READ_ONLY:
                assert value is None or value.is_absolute(), f"{service}: {name}={value} is relative"
                continue
            where = PurePosixPath(value)
            assert where.is_absolute() and DATA in where.parents, (
                f"{service}: {name}={value} is not under /data"
            )
            assert stage.owners.get(where) == stage.user, (
                f"{service}: {name}={value} is not made {stage.user}'s"
            )
        assert all(
            owner == "root" for path, owner in stage.owners.items() if path == APP or APP in path.parents
        )
        for made in stage.made:
            assert stage.owners[made] == stage.user, f"{service}: {made} is not owned by {stage.user}"


@pytest.mark.parametrize("files", [("docker-compose.yml",), SECURE], ids=["plain", "secure"])
def test_compose_keeps_every_written_directory_absolute_and_on_the_data_volume(files, tmp_path, monkeypatch):
    result = _compose("g", tmp_path, files, KAFKA_PASSWORD="k", REDIS_PASSWORD="r", MINIO_ROOT_PASSWORD="m")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)["services"]
    stages = _dockerfile_stages()
    for service in SERVICES:
        settings_cls = service_settings(service)
        env = {**stages[service].env, **config[service]["environment"]}
        settings = _settings_under(settings_cls, env, monkeypatch)
        mounts = [PurePosixPath(str(v).split(":")[1] if isinstance(v, str) else v["target"])
                  for v in config[service]["volumes"]]  # fmt: skip
        for name in _path_settings(settings_cls):
            value = getattr(settings, name)
            assert value is None or value.is_absolute(), f"{service}: {name}={value} is relative"
            if name not in READ_ONLY:
                where = PurePosixPath(value)
                assert DATA in where.parents, f"{service}: {name}={value} is not under /data"
                assert any(m == where or m in where.parents for m in mounts), (
                    f"{service}: {name} is on no volume"
                )
