"""The registry's console in a real browser (Debian's headless Chromium, driven by Playwright):
every page loads without a console error, says what the registry's API says, its links resolve,
a hostile tag stays text, unknown pages are 404s. Screenshots go to var/test-artifacts/console/."""

from __future__ import annotations

import shutil
import uuid
from typing import Any

import httpx

from driftloop.client import make_producer, send_all
from driftloop.contracts import TagModel
from driftloop.settings import Topics
from driftloop_registry.console import DRIFT_STATES
from tests.conftest import ROOT, wait_for

ARTIFACTS = ROOT / "var" / "test-artifacts" / "console"
HOSTILE = "<script>alert('tag')</script><img src=x onerror=alert('img')>"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is not installed (make system-deps installs it)"
    return path


async def check_console(registry: str, bootstrap: str, model: str, live: bool = False) -> None:
    """Drive the console of the registry at `registry` after a loop ran on `model` (`live`: with
    the stack's Prometheus, whose figures the front page shows)."""
    from playwright.async_api import async_playwright

    versions = httpx.get(f"{registry}/v1/versions", params={"model": model}).json()
    assert len(versions) >= 2, versions
    tagged = versions[0]["version"]
    await _tag(bootstrap, model, tagged)
    await wait_for(lambda: _tags(registry, model, tagged).get("note") == HOSTILE, 20, "the hostile tag")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        page.on(
            "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
        )
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("dialog", lambda d: problems.append(f"a dialog opened: {d.message}"))
        try:
            await _models_page(page, registry, model, live)
            await _model_page(page, registry, model, versions)
            for version in versions:
                await _version_page(page, registry, model, version)
            await _data_page(page, registry, model, versions[-1]["version"])
            await _compare(page, registry, model, versions)
            await _hostile_tag(page, registry, model, tagged)
            assert not problems, problems  # before the 404s below, which a browser reports as errors
            for path in (f"/ui/models/{model}/versions/999999", "/ui/models/no-such-model", "/ui/nowhere"):
                answer = await page.goto(registry + path)
                assert answer is not None and answer.status == 404, path
                assert "404" in await page.inner_text("h1")
        finally:
            await browser.close()
    assert all("status of 404" in p for p in problems), problems  # the 404s asked for, nothing else


async def _tag(bootstrap: str, model: str, version: int) -> None:
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        command = TagModel(command_id=f"xss-{uuid.uuid4().hex[:8]}", model=model, version=version,
                           tags={"note": HOSTILE}, reason=HOSTILE)  # fmt: skip
        await send_all(producer, Topics().models_commands, [command])
    finally:
        await producer.stop()


def _tags(registry: str, model: str, version: int) -> dict[str, str]:
    card = httpx.get(f"{registry}/v1/card", params={"model": model, "version": version})
    return card.json().get("tags", {}) if card.status_code == 200 else {}


async def _shot(page: Any, name: str) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def _links_resolve(page: Any, registry: str) -> None:
    """Every link of the page answers 200 (the console's pages and the API's)."""
    hrefs = await page.eval_on_selector_all("a[href]", "links => links.map(a => a.getAttribute('href'))")
    assert hrefs
    with httpx.Client(base_url=registry, timeout=10) as client:
        for href in set(hrefs):
            assert href.startswith("/"), f"a link leaves the console: {href}"
            assert client.get(href).status_code == 200, href


async def _models_page(page: Any, registry: str, model: str, live: bool) -> None:
    answer = await page.goto(f"{registry}/ui")
    assert answer is not None and answer.status == 200
    assert "default-src 'none'" in (await answer.all_headers())["content-security-policy"]
    aliases = next(m for m in httpx.get(f"{registry}/v1/models").json() if m["model"] == model)["aliases"]
    row = page.locator("table.models tr", has=page.locator(f"a[href='/ui/models/{model}']"))
    assert f"v{aliases['champion']}" in await row.inner_text()
    if live:  # the monitor's drift state of the model, through Prometheus
        assert await row.locator("td").nth(7).inner_text() in DRIFT_STATES.values()
    await _links_resolve(page, registry)
    await _shot(page, "models")


async def _model_page(page: Any, registry: str, model: str, versions: list[dict[str, Any]]) -> None:
    await page.goto(f"{registry}/ui/models/{model}")
    for version in versions:  # each version's status and what asked for it, as the API says
        row = page.locator(
            "table.versions tr",
            has=page.locator(f"a[href='/ui/models/{model}/versions/{version['version']}']"),
        )
        text = await row.inner_text()
        assert version["status"] in text and version["decision"] in text, (version, text)
    timeline = await page.inner_text("table.timeline")
    assert "drift detected" in timeline and "promoted" in timeline
    assert await page.locator("svg.chart g.bar").count() == len(versions)
    await _links_resolve(page, registry)
    await _shot(page, "model")


async def _version_page(page: Any, registry: str, model: str, version: dict[str, Any]) -> None:
    number = version["version"]
    await page.goto(f"{registry}/ui/models/{model}/versions/{number}")
    assert f"v{number}" in await page.inner_text("h1")
    lineage = await page.inner_text("ol.lineage")
    assert version["sha256"] in lineage and version["dataset_version"] in lineage
    await _links_resolve(page, registry)
    await _shot(page, f"version-{number}")


async def _data_page(page: Any, registry: str, model: str, number: int) -> None:
    await page.goto(f"{registry}/ui/models/{model}/versions/{number}")
    await page.click("ol.lineage a:text('profile')")  # the lineage's data step links to its profile
    assert page.url.endswith(f"/ui/models/{model}/versions/{number}/data")
    card = httpx.get(f"{registry}/v1/card", params={"model": model, "version": number}).json()
    inputs = card["trained"]["profile"]["features"]
    assert await page.locator("svg.histogram").count() == sum(f["kind"] == "numeric" for f in inputs)
    assert "compared with" in await page.inner_text("dl.facts")  # retrained: against the champion's data
    await _shot(page, "data")


async def _compare(page: Any, registry: str, model: str, versions: list[dict[str, Any]]) -> None:
    first, last = versions[0]["version"], versions[-1]["version"]
    await page.goto(f"{registry}/ui/models/{model}")
    await page.select_option("form.compare select[name=a]", str(first))
    await page.select_option("form.compare select[name=b]", str(last))
    await page.click("form.compare button")
    await page.wait_for_url(f"**/compare?a={first}&b={last}")
    assert await page.locator("table.compare tr.differs").count() >= 2  # at least the status and the artifact
    await _shot(page, "compare")


async def _hostile_tag(page: Any, registry: str, model: str, number: int) -> None:
    await page.goto(f"{registry}/ui/models/{model}/versions/{number}")
    assert HOSTILE in await page.inner_text("dl.facts")  # shown as written, as text
    assert await page.locator("img[src=x]").count() == 0 and await page.locator("main script").count() == 0
    await _shot(page, "hostile-tag")
