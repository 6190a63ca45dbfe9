"""Grafana dashboards as code: `make dashboards` writes `infra/grafana/dashboards/*.json`.

Three dashboards: the platform overview (every service at a glance), model quality (accuracy per
version, drift state, drift scores, retrain and promotion annotations) and per-service detail (one
service picked with the `service` variable). A unit test fails when the committed JSON is stale, and
the end-to-end test runs every panel's query against the real Prometheus of the local stack.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
SERVICES = ("ingest", "feature", "training", "registry", "inference", "monitor")


def panel(
    title: str,
    *queries: tuple[str, str],
    unit: str = "short",
    kind: str = "timeseries",
    width: int = 12,
    **extra: Any,
) -> dict[str, Any]:
    """One panel; `queries` are (PromQL, legend) pairs."""
    return {
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": width},
        "fieldConfig": {"defaults": {"unit": unit, **extra.pop("defaults", {})}, "overrides": []},
        "targets": [
            {"refId": chr(65 + i), "expr": expr, "legendFormat": legend, "datasource": DATASOURCE}
            for i, (expr, legend) in enumerate(queries)
        ],
        **extra,
    }


def annotation(name: str, expr: str, title: str, color: str) -> dict[str, Any]:
    return {
        "name": name,
        "enable": True,
        "iconColor": color,
        "datasource": DATASOURCE,
        "expr": expr,
        "titleFormat": title,
        "step": "10s",
    }


PROMOTIONS = annotation(
    "Promotions",
    'increase(driftloop_registry_events_total{event=~"ModelPromoted|ModelRolledBack"}[30s]) > 0',
    "{{model}}: {{event}}",
    "green",
)
RETRAINS = annotation(
    "Retrain requests",
    "increase(driftloop_monitor_retrain_requests_total[30s]) > 0",
    "{{model}}: retrain requested",
    "orange",
)


def dashboard(
    uid: str, title: str, panels: list[dict[str, Any]], annotations: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    x = y = 0
    for i, p in enumerate(panels, start=1):  # lay panels out left to right, top to bottom
        p["id"] = i
        if x + p["gridPos"]["w"] > 24:
            x, y = 0, y + 8
        p["gridPos"].update(x=x, y=y)
        x += p["gridPos"]["w"]
    return {
        "uid": uid,
        "title": title,
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "tags": ["driftloop"],
        "annotations": {"list": annotations},
        "panels": panels,
        **extra,
    }


def overview() -> dict[str, Any]:
    return dashboard(
        "driftloop-overview",
        "driftloop: platform overview",
        [
            panel(
                "Throughput by service (msg/s)",
                ('sum by (service) (rate(driftloop_messages_total{outcome="ok"}[1m]))', "{{service}}"),
                unit="ops",
            ),
            panel(
                "Batch handling latency p50 / p99 by service",
                (_quantile(0.5, "driftloop_batch_duration_seconds", "service"), "{{service}} p50"),
                (_quantile(0.99, "driftloop_batch_duration_seconds", "service"), "{{service}} p99"),
                unit="s",
            ),
            panel(
                "Errors: rejected messages by service (/s)",
                (
                    'sum by (service, outcome) (rate(driftloop_messages_total{outcome="rejected"}[5m]))',
                    "{{service}}",
                ),
                unit="ops",
            ),
            panel(
                "Dead letters by service and reason (/s)",
                (
                    "sum by (service, reason) (rate(driftloop_dead_letters_total[5m]))",
                    "{{service}} {{reason}}",
                ),
                unit="ops",
            ),
            panel(
                "Consumer lag by service and topic (records)",
                ("sum by (service, topic) (driftloop_consumer_lag)", "{{service}} {{topic}}"),
            ),
            panel(
                "Predictions served by model and outcome (/s)",
                (
                    "sum by (model, outcome) (rate(driftloop_predictions_total[1m]))",
                    "{{model}} {{outcome}}",
                ),
                unit="ops",
            ),
            panel(
                "Model version in service",
                ("driftloop_model_version", "{{service}} {{model}}"),
                defaults={"decimals": 0},
            ),
            panel("Services up", ("driftloop_service_up", "{{service}}")),
            panel(
                "Process memory (RSS) by service",
                ('process_resident_memory_bytes{job="driftloop"}', "{{service}}"),
                unit="bytes",
            ),
            panel(
                "CPU by service (cores)",
                ('rate(process_cpu_seconds_total{job="driftloop"}[1m])', "{{service}}"),
            ),
        ],
        [PROMOTIONS, RETRAINS],
    )


STATE_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "watching", "color": "green"},
            "1": {"text": "warm-up", "color": "blue"},
            "2": {"text": "warning", "color": "yellow"},
            "3": {"text": "drift", "color": "red"},
        },
    }
]


def model_quality() -> dict[str, Any]:
    def feature_drift(statistic: str, title: str) -> dict[str, Any]:
        return panel(
            title,
            (f'driftloop_monitor_feature_drift{{statistic="{statistic}"}}', "{{model}} {{feature}}"),
        )

    return dashboard(
        "driftloop-model-quality",
        "driftloop: model quality and drift",
        [
            panel(
                "Rolling accuracy by model and version, and the gate floor",
                ("driftloop_monitor_accuracy", "{{model}} v{{version}}"),
                ("driftloop_monitor_accuracy_floor", "{{model}} floor"),
                unit="percentunit",
            ),
            panel(
                "Estimated accuracy before labels (band) against the realised, and the estimate floor",
                ("driftloop_monitor_estimated_accuracy", "{{model}} v{{version}} estimated"),
                ("driftloop_monitor_estimated_accuracy_low", "{{model}} v{{version}} band low"),
                ("driftloop_monitor_estimated_accuracy_high", "{{model}} v{{version}} band high"),
                ("driftloop_monitor_accuracy", "{{model}} v{{version}} realised"),
                ("driftloop_monitor_estimate_floor", "{{model}} v{{version}} floor"),
                unit="percentunit",
            ),
            panel(
                "Estimate error: estimated minus realised accuracy on the labelled predictions",
                ("driftloop_monitor_estimate_error", "{{model}} v{{version}}"),
                unit="percentunit",
            ),
            panel(
                "Accuracy by slice: realised and estimated before labels (the champion)",
                ("driftloop_monitor_slice_accuracy", "{{model}} {{input}}={{slice}}"),
                ("driftloop_monitor_slice_estimated_accuracy", "{{model}} {{input}}={{slice}} estimated"),
                unit="percentunit",
            ),
            panel(
                "Gaps between slices (fairness) and their limits",
                ("driftloop_monitor_slice_gap", "{{model}} {{input}} {{measure}}"),
                ("driftloop_monitor_slice_gap_limit", "{{model}} {{measure}} limit"),
            ),
            panel(
                "Positive rate and traffic by slice",
                ("driftloop_monitor_slice_positive_rate", "{{model}} {{input}}={{slice}} positive rate"),
                ("driftloop_monitor_slice_accuracy_drop", "{{model}} {{input}}={{slice}} accuracy drop"),
                unit="percentunit",
            ),
            panel(
                "Top drivers of each champion: accuracy lost on its holdout when an input is shuffled",
                ("topk(10, driftloop_registry_champion_feature_importance)", "{{model}} {{input}}"),
                kind="bargauge",
                defaults={"min": 0},
            ),
            panel(
                "Rolling log loss by model and version",
                ("driftloop_monitor_log_loss", "{{model}} v{{version}}"),
            ),
            panel(
                "Drift state",
                ("driftloop_monitor_drift_state", "{{model}}"),
                kind="state-timeline",
                width=24,
                defaults={"mappings": STATE_MAPPINGS, "color": {"mode": "thresholds"}},
            ),
            panel(
                "Drift detections and warnings (last 5m)",
                (
                    "sum by (model, kind) (increase(driftloop_monitor_drift_detections_total[5m]))",
                    "{{model}} {{kind}} drift",
                ),
                (
                    "sum by (model) (increase(driftloop_monitor_drift_warnings_total[5m]))",
                    "{{model}} warnings",
                ),
            ),
            panel(
                "Retrain requests, training runs and promotions (last 15m)",
                (
                    "sum by (model) (increase(driftloop_monitor_retrain_requests_total[15m]))",
                    "{{model}} retrains",
                ),
                (
                    "sum by (model, outcome) (increase(driftloop_training_runs_total[15m]))",
                    "{{model}} training {{outcome}}",
                ),
                (
                    "sum by (model, event) (increase(driftloop_registry_events_total[15m]))",
                    "{{model}} {{event}}",
                ),
            ),
            feature_drift("psi", "Feature drift: PSI against training (flag at 0.25)"),
            feature_drift("ks", "Feature drift: KS distance against training"),
            feature_drift("wasserstein", "Feature drift: Wasserstein distance (reference std units)"),
            panel(
                "Prediction drift: PSI of predicted-class shares (flag at 0.25)",
                ("driftloop_monitor_prediction_psi", "{{model}}"),
            ),
            panel(
                "Predictions by model, version and class (/s)",
                (
                    "sum by (model, version, predicted) (rate(driftloop_monitor_predictions_total[1m]))",
                    "{{model}} v{{version}} {{predicted}}",
                ),
                unit="ops",
            ),
            panel(
                "Label delay p50 / p99",
                (_quantile(0.5, "driftloop_monitor_label_delay_seconds", "model", "5m"), "{{model}} p50"),
                (_quantile(0.99, "driftloop_monitor_label_delay_seconds", "model", "5m"), "{{model}} p99"),
                unit="s",
            ),
            panel(
                "Share of predictions not (yet) labelled, last 5m",
                (
                    "clamp_min(1 - sum by (model) (rate(driftloop_monitor_labelled_total[5m]))"
                    " / sum by (model) (rate(driftloop_monitor_predictions_total[5m])), 0)",
                    "{{model}}",
                ),
                unit="percentunit",
            ),
            panel(
                "Never labelled within the label window, and labels too late (/s)",
                ("sum by (model) (rate(driftloop_monitor_unlabelled_total[5m]))", "{{model}} never labelled"),
                (
                    "sum by (model) (rate(driftloop_monitor_labels_expired_total[5m]))",
                    "{{model}} label expired",
                ),
                unit="ops",
            ),
        ],
        [PROMOTIONS, RETRAINS],
    )


def service_detail() -> dict[str, Any]:
    sel = 'service="$service"'
    return dashboard(
        "driftloop-service",
        "driftloop: service detail",
        [
            panel(
                "Messages by topic and outcome (/s)",
                (
                    f"sum by (topic, outcome) (rate(driftloop_messages_total{{{sel}}}[1m]))",
                    "{{topic}} {{outcome}}",
                ),
                unit="ops",
            ),
            panel(
                "Batch handling latency p50 / p99 by topic",
                (_quantile(0.5, "driftloop_batch_duration_seconds", "topic", sel=sel), "{{topic}} p50"),
                (_quantile(0.99, "driftloop_batch_duration_seconds", "topic", sel=sel), "{{topic}} p99"),
                unit="s",
            ),
            panel(
                "Latency budget: p99 per record by hop (queued, waiting, handling and its stages, "
                "acknowledged, committed, total)",
                (
                    _quantile(0.99, "driftloop_record_hop_seconds", "consumer, hop", sel=sel),
                    "{{consumer}} {{hop}}",
                ),
                unit="s",
            ),
            panel(
                "Latency budget: mean per record by hop",
                (
                    f"sum by (consumer, hop) (rate(driftloop_record_hop_seconds_sum{{{sel}}}[1m])) / "
                    f"sum by (consumer, hop) (rate(driftloop_record_hop_seconds_count{{{sel}}}[1m]))",
                    "{{consumer}} {{hop}}",
                ),
                unit="s",
            ),
            panel(
                "Batch size p50 / max by topic (records)",
                (_quantile(0.5, "driftloop_batch_size", "topic", sel=sel), "{{topic}} p50"),
                (_quantile(1.0, "driftloop_batch_size", "topic", sel=sel), "{{topic}} max"),
            ),
            panel(
                "Dead letters by reason (/s)",
                (f"sum by (reason) (rate(driftloop_dead_letters_total{{{sel}}}[5m]))", "{{reason}}"),
                unit="ops",
            ),
            panel(
                "Consumer lag by topic and partition (records)",
                (f"driftloop_consumer_lag{{{sel}}}", "{{topic}}[{{partition}}]"),
            ),
            panel(
                "Stalled: seconds without a commit while records wait (or batches fail)",
                (f"driftloop_consumer_stalled_seconds{{{sel}}}", "{{consumer}}"),
                unit="s",
            ),
            panel(
                "HTTP (v2 API): requests by endpoint and status (/s)",
                (
                    f"sum by (endpoint, code) (rate(driftloop_http_requests_total{{{sel}}}[1m]))",
                    "{{endpoint}} {{code}}",
                ),
                unit="ops",
            ),
            panel(
                "HTTP (v2 API): latency p50 / p99 by endpoint",
                (_quantile(0.5, "driftloop_http_request_seconds", "endpoint", sel=sel), "{{endpoint}} p50"),
                (_quantile(0.99, "driftloop_http_request_seconds", "endpoint", sel=sel), "{{endpoint}} p99"),
                unit="s",
            ),
            panel(
                "HTTP (v2 API): rows per model run (dynamic batching) p50 / p99",
                (_quantile(0.5, "driftloop_http_batch_rows", "service", sel=sel), "p50"),
                (_quantile(0.99, "driftloop_http_batch_rows", "service", sel=sel), "p99"),
            ),
            panel(
                "Predictions by transport and outcome (/s)",
                (
                    f"sum by (transport, outcome) (rate(driftloop_predictions_total{{{sel}}}[1m]))",
                    "{{transport}} {{outcome}}",
                ),
                unit="ops",
            ),
            panel(
                "Model version in service",
                (f"driftloop_model_version{{{sel}}}", "{{model}}"),
                defaults={"decimals": 0},
            ),
            panel(
                "Process memory (RSS)",
                (f'process_resident_memory_bytes{{job="driftloop",{sel}}}', "rss"),
                unit="bytes",
            ),
            panel(
                "CPU (cores) and up",
                (f'rate(process_cpu_seconds_total{{job="driftloop",{sel}}}[1m])', "cpu"),
                (f"driftloop_service_up{{{sel}}}", "up"),
            ),
        ],
        [PROMOTIONS],
        templating={
            "list": [
                {
                    "name": "service",
                    "label": "service",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": "label_values(driftloop_service_up, service)",
                    "refresh": 2,
                    "current": {"text": "inference", "value": "inference"},
                    "options": [],
                }
            ]
        },
    )


def _quantile(q: float, histogram: str, by: str, window: str = "1m", sel: str = "") -> str:
    selector = f"{{{sel}}}" if sel else ""
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({histogram}_bucket{selector}[{window}])))"


DASHBOARDS = {
    "driftloop-overview.json": overview,
    "driftloop-model-quality.json": model_quality,
    "driftloop-service.json": service_detail,
}


def generate(out: Path) -> list[Path]:
    """Write every dashboard under `out`; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in DASHBOARDS.items():
        path = out / name
        path.write_text(json.dumps(build(), indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "dashboards"):
        print(path.name)
