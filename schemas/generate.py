"""Generate `schemas/`: a JSON Schema per message contract, an AsyncAPI document per service and
the OpenAPI document of the inference service's v2 HTTP API.

Run with `make schemas`; a test regenerates into a temporary directory and fails when the
committed files differ.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from driftloop.contracts import CONTRACTS
from driftloop.localstack import SERVICES
from driftloop.settings import service_settings
from driftloop_inference.v2 import openapi

ROOT = Path(__file__).resolve().parents[1]


def _dump(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def generate(out: Path) -> list[Path]:
    """Write every schema under `out`; return the paths written."""
    written = []
    for name, model in sorted(CONTRACTS.items()):
        path = out / "json" / f"{name}.json"
        _dump(path, model.model_json_schema())
        written.append(path)
    for service in SERVICES:
        app_module = importlib.import_module(f"driftloop_{service}.app")
        app = app_module.create_app(service_settings(service)())
        document = app.service.asyncapi((app_module.__doc__ or "").strip())
        path = out / "asyncapi" / f"{service}.json"
        _dump(path, document)
        written.append(path)
    path = out / "openapi" / "inference.json"
    _dump(path, openapi())
    written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "schemas"
    for written in generate(target):
        print(written.relative_to(target))
