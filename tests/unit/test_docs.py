"""The docs: the site builds with `--strict` (no broken link, no page left out), its reference pages
cover the code they are generated from, and the README stays a short entry point whose links resolve."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from driftloop.contracts import CONTRACTS
from driftloop.localstack import SERVICES
from driftloop.settings import service_settings
from tests.conftest import ROOT

README_MAX_LINES = 250


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stderr[-4000:]}"
    return out


def _text(site, page: str) -> str:
    html = (site / page / "index.html").read_text(encoding="utf-8")
    return re.sub(r"<[^>]+>", "", html)


def test_the_settings_reference_names_every_variable_of_every_service(site):
    text = _text(site, "reference/settings")
    for service in SERVICES:
        for name, field in service_settings(service).model_fields.items():
            if name == "topics":
                names = [f"DRIFTLOOP_TOPICS__{t.upper()}" for t in field.annotation.model_fields]
            else:
                names = [f"DRIFTLOOP_{name.upper()}"]
            missing = [n for n in names if n not in text]
            assert missing == [], f"{service}: {missing} not in the settings reference"


def test_the_contracts_reference_has_every_message_and_field(site):
    text = _text(site, "reference/contracts")
    for name, model in CONTRACTS.items():
        assert name in text
        section = text[text.index(name) :]
        assert all(field in section for field in model.model_fields), name


def test_the_cli_reference_has_every_command(site):
    text = _text(site, "reference/cli")
    for command in ("up", "down", "status", "replay", "backtest", "train", "predict", "demo"):
        assert f"driftloop {command}" in text
    for action in ("list", "show", "promote", "approve", "rollback", "tag"):
        assert f"driftloop models {action}" in text


def test_the_readme_is_short_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MAX_LINES
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert local, "the README links into the docs"
    broken = [t for t in local if not (ROOT / t).exists()]
    assert broken == []


CODE_PATH = re.compile(
    r"`((?:shared|services|tests|bench|infra|schemas|models|docs)/[\w./<>-]+?\.(?:py|ya?ml|json|md))`"
)
MODULE = re.compile(r"`(driftloop(?:_\w+)?(?:\.\w+)+)`")
NOT_MODULES = {"driftloop.queued_ms"}  # a span attribute (observability page)


def _pages():
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_file_and_module_the_docs_name_exists():
    """A newcomer follows the docs to a file: every repository path and `driftloop.*` module a page
    names in code spans exists (dated run history aside: it describes code as it was)."""
    missing, named = [], 0
    for page in _pages():
        if page.parent.name == "runs" or page.name == "CHANGELOG.md":
            continue
        text = page.read_text(encoding="utf-8")
        named += len(CODE_PATH.findall(text)) + len(MODULE.findall(text))
        for path in CODE_PATH.findall(text):
            written = path.startswith("bench/results/")  # what a benchmark writes when it runs
            if "<" not in path and not written and not (ROOT / path).exists():
                missing.append(f"{page.relative_to(ROOT)}: {path}")
        for dotted in set(MODULE.findall(text)) - NOT_MODULES:
            package, *rest = dotted.split(".")
            base = ROOT / "shared" if package == "driftloop" else ROOT / "services" / package.split("_", 1)[1]
            parts = [package, *rest]
            found = any(
                (base / Path(*parts[:k])).with_suffix(".py").exists() or (base / Path(*parts[:k])).is_dir()
                for k in range(len(parts), 0, -1)
                if k >= 2
            )
            if not found:
                missing.append(f"{page.relative_to(ROOT)}: {dotted}")
    assert named > 50 and missing == [], missing  # the docs name files: the patterns still match
