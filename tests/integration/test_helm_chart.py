"""The Helm chart (infra/helm/driftloop), rendered by Helm's own engine (the Helm v4 SDK through
`helm-python-sdk`: no helm binary needed) for its default values and the production example,
every object validated against the Kubernetes API schemas (`kubernetes-validate`, strict) and the
KEDA and Prometheus Operator CRD schemas (from `cloudcoil-models-keda` and
`cloudcoil-models-prometheus-operator`, generated from those projects' CRDs; unknown fields
refused, as `kubectl apply --validate=strict` does), and held to the code it deploys: the
environment of every container is real settings that load, the autoscaled consumer groups and
topics are the ones the services use, the alert rules are the ones promtool checks."""

from __future__ import annotations

import copy
import importlib.metadata
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

from driftloop.localstack import SERVICES
from driftloop.settings import Topics, service_settings
from driftloop.spec import read_specs
from tests.conftest import ROOT

CHART = ROOT / "infra" / "helm" / "driftloop"
KUBERNETES = ("1.27.0", "1.37.0")  # the chart's kubeVersion floor, and the newest schema here
CRDS = {  # kind -> model generated from the project's CRD (the version is the package's)
    "ScaledObject": ScaledObject,
    "TriggerAuthentication": TriggerAuthentication,
    "ServiceMonitor": ServiceMonitor,
    "PrometheusRule": PrometheusRule,
}
SCALED = {"ingest": "events_raw", "feature": "events_validated", "inference": "predictions_requests"}
SINGLE = ("training", "registry", "monitor")


def production() -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values-production.yaml").read_text())
    values["specs"] = {"files": {"sea.yaml": (ROOT / "models" / "sea.yaml").read_text()}}
    return values


VALUES = {"default": {}, "production": production()}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    rendered = helm.Chart.load(CHART).render(values or {}, name="dl", namespace="ml")
    return [
        doc
        for path, text in rendered.items()
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The workload of each service, by service."""
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
    }


def strict_schema(model: Any) -> dict[str, Any]:
    """The model's JSON schema with unknown fields refused in every object that lists its fields."""

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    schema = model.model_json_schema(by_alias=True, mode="validation")
    close(schema)
    return schema


def problems(doc: dict[str, Any], version: str) -> list[str]:
    """Why the API server (fieldValidation=Strict) would refuse the object, if it would."""
    if doc["kind"] in CRDS:
        validator = jsonschema.Draft202012Validator(strict_schema(CRDS[doc["kind"]]))
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'/'.join(map(str, exc.absolute_path))}: {exc.message}"]
    return []


def environment(doc: dict[str, Any], configmaps: dict[str, dict[str, Any]]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: its ConfigMaps, then its own entries;
    a value from a Secret is a stand-in (the test is about names and shapes, not secrets)."""
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    for entry in container.get("env", []):
        env[entry["name"]] = entry.get("value", "from-a-secret")
    return env


def settings_fields(env: dict[str, str]) -> dict[str, Any]:
    """`DRIFTLOOP_*` variables as the settings read them (nested with `__`)."""
    fields: dict[str, Any] = {}
    for name, value in env.items():
        assert name.startswith("DRIFTLOOP_"), f"{name} is not a driftloop setting"
        key, _, nested = name.removeprefix("DRIFTLOOP_").lower().partition("__")
        if nested:
            fields.setdefault(key, {})[nested] = value
        else:
            fields[key] = value
    return fields


# ------------------------------------------------------------------------------- Helm itself


def test_helm_lints_the_chart_strictly_without_errors_or_warnings():
    for values in VALUES.values():
        report = helm.lint(CHART, values, strict=True, kube_version="v1.30.0")
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_the_values_schema_refuses_unknown_and_malformed_values():
    with pytest.raises(helm.HelmValuesError, match="bootstrapp"):
        render({"kafka": {"bootstrapp": "kafka:9092"}})
    with pytest.raises(helm.HelmValuesError, match="securityProtocol"):
        render({"kafka": {"bootstrap": "kafka:9092", "securityProtocol": "TLS"}})
    with pytest.raises(helm.HelmValuesError):
        render({"services": {"inference": {"env": {"KAFKA_BOOTSTRAP": "x"}}}})  # not a DRIFTLOOP_ setting


# ------------------------------------------------------------- valid for the API server


@pytest.mark.parametrize("name", VALUES)
@pytest.mark.parametrize("version", KUBERNETES)
def test_every_rendered_object_is_valid_for_kubernetes_and_the_crds(name, version):
    docs = render(VALUES[name])
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "Service", "PodDisruptionBudget", "ConfigMap"} <= kinds
    if name == "production":
        assert {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule", "Job"} <= kinds
    for doc in docs:
        assert problems(doc, version) == [], (doc["kind"], doc["metadata"]["name"])


def test_the_validators_refuse_what_the_api_server_would():
    docs = render(VALUES["production"])
    deployment = copy.deepcopy(workloads(docs)["inference"])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    assert problems(deployment, KUBERNETES[0])
    for kind in CRDS:
        doc = copy.deepcopy(next(d for d in docs if d["kind"] == kind))
        doc["spec"]["unknownField"] = 1
        assert problems(doc, KUBERNETES[0]), kind
    (scaled, *_) = (copy.deepcopy(d) for d in docs if d["kind"] == "ScaledObject")
    scaled["spec"]["maxReplicaCount"] = "many"
    assert problems(scaled, KUBERNETES[0])


# --------------------------------------------------------------- held to the code


@pytest.mark.parametrize("name", VALUES)
def test_every_container_gets_real_settings_that_load(name):
    docs = render(VALUES[name])
    configmaps = by_kind(docs, "ConfigMap")
    services = workloads(docs)
    assert set(services) == set(SERVICES)
    for service, doc in services.items():
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        assert container["image"].endswith(
            f"/{service}:{VALUES[name].get('image', {}).get('tag') or '0.1.0'}"
        )
        fields = settings_fields(environment(doc, configmaps))
        settings_cls = service_settings(service)
        assert set(fields) <= set(settings_cls.model_fields), service
        settings = settings_cls.model_validate(fields)  # types, and the secure settings are complete
        assert settings.http_port == 8000 and settings.http_host == "0.0.0.0"
        assert str(settings.data_dir).startswith("/data")
        assert settings.object_store_url == VALUES[name].get("objectStore", {}).get(
            "url", "s3://driftloop/platform"
        )


def test_credentials_come_from_secrets_only():
    values = production()
    docs = render(values)
    settings = by_kind(docs, "ConfigMap")["dl-driftloop-settings"]["data"]
    assert not any("PASSWORD" in k or "SECRET" in k for k in settings)
    assert "dl-driftloop-secrets" not in by_kind(docs, "Secret")  # existingSecret: the chart makes none
    for doc in workloads(docs).values():
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
        assert refs["DRIFTLOOP_KAFKA_SASL_PASSWORD"]["name"] == "driftloop-credentials"
        assert refs["DRIFTLOOP_OBJECT_STORE_SECRET_ACCESS_KEY"]["key"] == "object-store-secret-access-key"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/etc/driftloop/kafka-ca", "/etc/driftloop/redis-ca"} <= mounts
    made = render({"secrets": {"redisPassword": "r-secret"}})
    assert by_kind(made, "Secret")["dl-driftloop-secrets"]["stringData"] == {"redis-password": "r-secret"}
    assert "r-secret" not in yaml.safe_dump(by_kind(made, "ConfigMap"))


@pytest.mark.parametrize("name", VALUES)
def test_pods_run_unprivileged_with_probes_limits_and_a_disruption_budget(name):
    docs = render(VALUES[name])
    budgets = by_kind(docs, "PodDisruptionBudget")
    for service, doc in workloads(docs).items():
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
        assert writable == {"/data", "/tmp"}, service  # the rest of the filesystem is read-only
        budget = budgets[doc["metadata"]["name"]]
        assert budget["spec"]["selector"]["matchLabels"] == doc["spec"]["selector"]["matchLabels"]


def test_state_on_disk_gets_a_volume_of_its_own_per_pod_and_nothing_is_shared():
    docs = render(VALUES["production"])
    for service, doc in workloads(docs).items():
        volumes = doc["spec"]["template"]["spec"]["volumes"]
        assert not any("persistentVolumeClaim" in v or "hostPath" in v for v in volumes), service
        if service in ("ingest", "training"):  # the offline store's index, the training store
            assert doc["kind"] == "StatefulSet"
            (claim,) = doc["spec"]["volumeClaimTemplates"]
            assert claim["metadata"]["name"] == "data" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        else:
            assert doc["kind"] == "Deployment"
            assert {"name": "data", "emptyDir": {}} in volumes
            # a single-instance service never runs twice, not even for a rollout
            expected = "Recreate" if service in SINGLE else "RollingUpdate"
            assert doc["spec"]["strategy"]["type"] == expected, service


def test_single_writer_services_refuse_a_second_replica():
    for service in SINGLE:
        with pytest.raises(helm.HelmRenderError, match=f"services.{service}.replicas"):
            render({"services": {service: {"replicas": 2}}})


# ---------------------------------------------------------------------- autoscaling


def test_keda_scales_the_request_path_on_the_lag_of_the_services_own_groups_and_topics():
    values = production()
    docs = render(values)
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in by_kind(docs, "ScaledObject").values()}
    services = workloads(docs)
    assert {s for s, d in services.items() if d["metadata"]["name"] in scaled} == set(SCALED)
    for service, topic_field in SCALED.items():
        doc = services[service]
        scaler = scaled[doc["metadata"]["name"]]
        assert scaler["spec"]["scaleTargetRef"]["kind"] == doc["kind"]
        assert "replicas" not in doc["spec"]  # KEDA owns the count
        (trigger,) = scaler["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        assert (
            trigger["metadata"]["consumerGroup"] == service_settings(service).model_fields["group_id"].default
        )
        assert trigger["metadata"]["topic"] == getattr(Topics(), topic_field)
        assert trigger["metadata"]["bootstrapServers"] == values["kafka"]["bootstrap"]
        assert scaler["spec"]["maxReplicaCount"] <= values["kafka"]["partitions"]
        assert trigger["authenticationRef"]["name"] == "dl-driftloop-kafka"
    auth = by_kind(docs, "TriggerAuthentication")["dl-driftloop-kafka"]["spec"]["secretTargetRef"]
    assert {a["parameter"] for a in auth} == {"tls", "sasl", "username", "password", "ca"}
    keda = by_kind(docs, "Secret")["dl-driftloop-keda-kafka"]["stringData"]
    assert keda == {"tls": "enable", "sasl": "scram_sha512", "username": "driftloop"}


def test_autoscaling_never_goes_past_the_partitions_and_follows_topic_overrides():
    too_many = {
        "kafka": {"partitions": 3},
        "services": {"feature": {"autoscaling": {"enabled": True, "maxReplicas": 4}}},
    }
    with pytest.raises(helm.HelmRenderError, match=r"more than kafka\.partitions"):
        render(too_many)
    renamed = {"topics": {"events_validated": "acme.validated"},
               "services": {"feature": {"autoscaling": {"enabled": True, "maxReplicas": 3},
                                        "env": {"DRIFTLOOP_GROUP_ID": "acme-feature"}}}}  # fmt: skip
    docs = render(renamed)
    (scaler,) = by_kind(docs, "ScaledObject").values()
    assert scaler["spec"]["triggers"][0]["metadata"]["topic"] == "acme.validated"
    assert scaler["spec"]["triggers"][0]["metadata"]["consumerGroup"] == "acme-feature"
    assert "authenticationRef" not in scaler["spec"]["triggers"][0]  # PLAINTEXT: nothing to authenticate
    fields = settings_fields(environment(workloads(docs)["feature"], by_kind(docs, "ConfigMap")))
    settings = service_settings("feature").model_validate(fields)
    assert settings.topics.events_validated == "acme.validated" and settings.group_id == "acme-feature"  # type: ignore[attr-defined]


# -------------------------------------------------------------------- monitoring


def test_the_prometheus_rule_is_the_alert_file_and_targets_get_the_labels_it_uses():
    docs = render(VALUES["production"])
    (rule,) = by_kind(docs, "PrometheusRule").values()
    assert rule["spec"] == yaml.safe_load((ROOT / "infra" / "prometheus" / "alerts.yml").read_text())
    assert 'job="driftloop"' in yaml.safe_dump(rule["spec"])
    (monitor,) = by_kind(docs, "ServiceMonitor").values()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    for service in SERVICES:
        svc = by_kind(docs, "Service")[f"dl-driftloop-{service}"]
        labels = svc["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert labels[monitor["spec"]["jobLabel"]] == "driftloop"  # job="driftloop", as alerts.yml expects
        assert labels["app.kubernetes.io/component"] == service  # relabelled to service=<name>
        assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    (relabel,) = endpoint["relabelings"]
    assert relabel["targetLabel"] == "service"
    assert relabel["sourceLabels"] == ["__meta_kubernetes_service_label_app_kubernetes_io_component"]


# --------------------------------------------------------------------------- specs


def test_a_job_applies_the_spec_files_after_install_and_upgrade(tmp_path: Path):
    docs = render(VALUES["production"])
    (job,) = by_kind(docs, "Job").values()
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["/app/.venv/bin/driftloop", "apply", "/models"]
    (volume,) = (v for v in pod["volumes"] if v["name"] == "specs")
    files = by_kind(docs, "ConfigMap")[volume["configMap"]["name"]]["data"]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert set(read_specs(tmp_path).specs) == {"sea"}  # the files arrive as `driftloop apply` reads them
    env = environment(job, by_kind(docs, "ConfigMap"))
    service_settings("registry").model_validate(settings_fields(env))  # it reaches the same Kafka
    assert not by_kind(render({}), "Job")  # no specs given: no Job


def test_the_crd_schemas_come_from_the_versions_documented():
    docs = (ROOT / "docs" / "operations" / "kubernetes.md").read_text()
    for package in ("cloudcoil-models-keda", "cloudcoil-models-prometheus-operator", "helm-python-sdk"):
        version = importlib.metadata.version(package)
        assert f"{package} {version}" in docs, f"docs/operations/kubernetes.md names {package} {version}"
