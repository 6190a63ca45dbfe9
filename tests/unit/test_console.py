"""The registry's web console on its in-memory repository: what each page says (the timeline, the
gate chart, lineage, compare), that every value from outside is escaped, the security headers,
and 404s. The console in a real browser against a live registry: tests/e2e/test_console.py."""

import re
from html import unescape

import numpy as np
import pytest

from driftloop import fitting
from driftloop.artifacts import ArtifactStore
from driftloop.contracts import PromoteModel, TagModel
from driftloop.fastpath import Outbox
from driftloop.profile import profile
from driftloop.settings import Topics
from driftloop.spec import load_spec
from driftloop_registry import console
from driftloop_registry.adapters import CardWriter, InMemoryRegistryRepository
from driftloop_registry.handlers import Registry
from driftloop_registry.web import Console
from tests.conftest import ROOT
from tests.helpers import model_trained

TOPICS = Topics()
HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)">'


@pytest.fixture
async def registry(tmp_path):
    registry = Registry(
        {name: load_spec(ROOT / "models" / f"{name}.yaml") for name in ("sea", "agrawal")},
        InMemoryRegistryRepository(),
        ArtifactStore.at("memory://"),
        CardWriter(tmp_path / "cards"),
        TOPICS,
    )
    artifact = await registry.artifacts.put(b"onnx bytes")
    sea = registry.specs["sea"]
    rng = np.random.default_rng(1)
    X = rng.uniform(0, 10, (1_000, 3))
    stats = fitting.reference_stats(X[:500], ["x0", "x1", "x2"])
    described = profile(sea, X, (X[:, 0] + X[:, 1] > 8).astype(int).tolist(), stats, compared_with=1)
    runs = (("r1", "bootstrap", 0.90, None), ("r2", "drift", 0.93, 0.90), ("r3", "periodic", 0.30, 0.93))
    for run_id, reason, accuracy, champion in runs:
        trained = model_trained(run_id=run_id, artifact=artifact, accuracy=accuracy, champion=champion)
        update = {"reason": reason, "profile": described if run_id == "r2" else None}
        await registry.register(trained.model_copy(update=update), Outbox(TOPICS.events_dlq))
    tag = TagModel(command_id="t1", model="sea", version=2, tags={"note": HOSTILE}, reason=HOSTILE)
    await registry.execute(tag, Outbox(TOPICS.events_dlq))
    await registry.execute(PromoteModel(command_id="p1", model="sea", version=1), Outbox(TOPICS.events_dlq))
    return registry


async def _get(app, path: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    target, _, query = path.partition("?")
    scope = {"type": "http", "method": method, "path": target, "query_string": query.encode()}
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, None, send)
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, sent[1]["body"].decode()


def _text(html: str) -> str:
    """The page's text without tags, whitespace folded (what a reader sees)."""
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


async def test_the_timeline_says_what_happened_to_each_version_and_who_asked(registry):
    entries = console.timeline(await registry.records("sea"))
    by_what = [(e.version, e.what, e.asked_by) for e in entries]
    assert by_what == [
        (1, "promoted", "operator command"),  # the operator's promote of v1 back
        (2, "tagged", "operator command"),
        (3, "rejected", "schedule"),
        (3, "trained", "schedule"),
        (2, "promoted", "drift detected"),
        (2, "trained", "drift detected"),
        (1, "promoted", "first model"),
        (1, "trained", "first model"),
    ]
    assert [e.at for e in entries] == sorted((e.at for e in entries), reverse=True)
    assert console.asked_by("drift") == "drift detected" and console.asked_by("custom") == "custom"


async def test_the_gate_chart_puts_each_candidate_beside_its_champion_on_one_scale(registry):
    chart = console.gate_chart(await registry.records("sea"))
    assert chart is not None and chart.metric == "accuracy" and not chart.lower_is_better
    assert [(b.version, b.blessed) for b in chart.bars] == [(1, True), (2, True), (3, False)]
    v1, v2, v3 = chart.bars
    assert v1.champion_y is None and v2.champion_y is not None
    assert v2.y < v1.y < v3.y  # a higher accuracy is drawn higher (a smaller y)
    assert v2.champion_y == v1.y  # v2's champion scored what v1 scored: the same height
    assert all(b.y + b.height == pytest.approx(console.TOP + console.PLOT_HEIGHT) for b in chart.bars)
    assert chart.low <= 0.30 and chart.high >= 0.93
    assert console.gate_chart([]) is None


async def test_lineage_runs_from_the_data_to_the_promotions(registry):
    record = await registry.card("sea", 1)
    steps = console.lineage(record)
    assert [s.kind for s in steps][:4] == ["data", "features", "training run", "artifact"]
    assert [s.kind for s in steps][4:] == ["promoted", "promoted"]  # at registration, and the operator's
    artifact = dict(steps[3].facts)
    assert artifact["sha256"] == record["trained"]["artifact"]["sha256"]
    assert steps[0].name == f"dataset {record['trained']['dataset']['version']}"


async def test_compare_marks_what_differs(registry):
    rows = {r.label: r for r in console.compare(await registry.card("sea", 1), await registry.card("sea", 3))}
    assert rows["holdout accuracy"].differs and rows["holdout accuracy"].b == "0.3000"
    assert not rows["algorithm"].differs
    assert rows["status"].a == "champion" and rows["status"].b == "rejected"


async def test_every_page_answers_with_the_registry_data_escaped_and_a_strict_policy(registry):
    app = Console(registry)
    pages = ["/ui", "/ui/", "/ui/models/sea", "/ui/models/sea/versions/2", "/ui/models/sea/compare?a=1&b=2"]
    for path in [*pages, "/ui/models/sea/versions/2/data", "/ui/models/sea/versions/1/data"]:
        status, headers, html = await _get(app, path)
        assert status == 200, path
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in headers["content-security-policy"]
        assert "script-src" not in headers["content-security-policy"]  # none: default-src 'none'
        assert "<script" not in html and "<img" not in html, path  # the hostile tag is text
    _, _, page = await _get(app, "/ui/models/sea/versions/2")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert HOSTILE in _text(page)  # shown as it was written
    _, _, page = await _get(app, "/ui/models/sea")
    text = _text(page)
    for version in await registry.list_versions("sea"):
        assert f"v{version['version']} {version['status']}" in text
    _, _, page = await _get(app, "/ui/models/sea/versions/2/data")
    text = _text(page)
    assert "compared with the training data of v1" in text and text.count("stable") == 3  # same distribution
    assert page.count('<rect x="') >= 3 * 20  # a 20-bin histogram per input
    _, _, page = await _get(app, "/ui/models/sea/versions/1/data")
    assert "No profile" in page
    status, headers, css = await _get(app, "/ui/static/console.css")
    assert status == 200 and headers["content-type"] == "text/css" and "--accent" in css


@pytest.mark.parametrize(
    "path",
    [
        "/ui/models/nope",
        "/ui/models/sea/versions/9",
        "/ui/models/sea/versions/x",
        "/ui/models/sea/versions/0",
        "/ui/models/sea/compare?a=1&b=9",
        "/ui/models/sea/compare?a=1",
        "/ui/models/Bad%20Name",
        "/ui/models/sea\n",
        "/ui/elsewhere",
        "/ui/models/sea/versions/1/more",
    ],
)
async def test_an_unknown_page_model_or_version_is_a_404_page(registry, path):
    status, headers, html = await _get(Console(registry), path)
    assert status == 404 and "404" in html
    assert "default-src 'none'" in headers["content-security-policy"]


async def test_a_declared_model_without_a_version_has_a_page_that_says_so(registry):
    status, _, page = await _get(Console(registry), "/ui/models/agrawal")
    assert status == 200 and "No version yet" in page
    _, _, page = await _get(Console(registry), "/ui")
    assert 'href="/ui/models/agrawal"' in page


async def test_the_console_only_reads(registry):
    status, headers, _ = await _get(Console(registry), "/ui/models/sea", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, body = await _get(Console(registry), "/ui/models/sea", method="HEAD")
    assert status == 200 and body == "" and int(headers["content-length"]) > 1000


async def test_live_figures_are_the_champions_and_absent_without_prometheus(registry):
    from driftloop_registry.web import _champions

    vector = [
        {"metric": {"model": "sea", "version": "1"}, "value": [0, "0.91"]},
        {"metric": {"model": "sea", "version": "2"}, "value": [0, "0.55"]},
        {"metric": {"model": "sea"}, "value": [0, "3"]},
        {"metric": {"model": "other", "version": "1"}, "value": [0, "0.1"]},
    ]
    assert _champions(vector[:2], {"sea": 1}) == {"sea": 0.91}
    assert _champions(vector[2:3], {"sea": 1}) == {"sea": 3.0}
    assert _champions(vector[3:], {"sea": 1}) == {}
    _, _, page = await _get(Console(registry), "/ui")
    assert "Live figures need Prometheus" in page
    # a Prometheus that does not answer leaves the figures out, the page still answers
    status, _, page = await _get(Console(registry, "http://127.0.0.1:9", timeout_s=0.2), "/ui")
    assert status == 200 and "Live figures need Prometheus" not in page
