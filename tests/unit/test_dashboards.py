"""The Grafana dashboards are generated from `infra/grafana/dashboards.py`: fail when the committed
JSON is stale or a dashboard is malformed (overlapping panels, duplicate ids, a panel without a query).
"""

import importlib.util
import json

import pytest

from tests.conftest import ROOT

DASHBOARDS = ROOT / "infra" / "grafana" / "dashboards"


def _generator():
    spec = importlib.util.spec_from_file_location("dashboards", ROOT / "infra" / "grafana" / "dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_dashboards_match_the_generator(tmp_path):
    written = _generator().generate(tmp_path)
    assert {p.name for p in written} == {p.name for p in DASHBOARDS.glob("*.json")}
    stale = [
        p.name for p in written if json.loads(p.read_text()) != json.loads((DASHBOARDS / p.name).read_text())
    ]
    assert stale == [], f"stale dashboards (run `make dashboards`): {stale}"


@pytest.mark.parametrize("path", sorted(DASHBOARDS.glob("*.json")), ids=lambda p: p.stem)
def test_dashboard_is_well_formed(path):
    dashboard = json.loads(path.read_text())
    panels = dashboard["panels"]
    assert len(panels) >= 8
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:
        assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & area, f"{p['title']!r} overlaps another panel"
        cells |= area


def test_the_three_dashboards_cover_what_operators_need():
    uids = {json.loads(p.read_text())["uid"] for p in DASHBOARDS.glob("*.json")}
    assert uids == {"driftloop-overview", "driftloop-model-quality", "driftloop-service"}
    quality = (DASHBOARDS / "driftloop-model-quality.json").read_text()
    for metric in ("driftloop_monitor_accuracy", "driftloop_monitor_drift_state", "statistic=\\\"ks\\\"",
                   "driftloop_monitor_prediction_psi", "driftloop_registry_events_total"):  # fmt: skip
        assert metric in quality
    service = json.loads((DASHBOARDS / "driftloop-service.json").read_text())
    assert all("$service" in t["expr"] for p in service["panels"] for t in p["targets"])
