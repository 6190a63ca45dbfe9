"""Generate the reference pages of the docs site from the code (run by mkdocs-gen-files at build).

Each page is derived from the one place that defines it, so it cannot drift from the code: the spec
format from `driftloop.spec`, the message contracts from `driftloop.contracts`, the CLI from its
argparse parser, the settings from the settings classes and the registry's HTTP API from its
OpenAPI file.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from driftloop import cli, spec
from driftloop.contracts import CONTRACTS
from driftloop.localstack import SERVICES
from driftloop.settings import ServiceSettings, service_settings

ROOT = Path(__file__).resolve().parents[1]


def _type(annotation: Any) -> str:
    """A field's type as a reader writes it: `int | None`, `list[str]`, `"a" | "b"`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type(a) for a in args)
    if origin is not None:
        inner = ", ".join(_type(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "(computed)"
        return "(see below)" if isinstance(value, BaseModel) else f"`{value!r}`"
    if field.default is PydanticUndefined:
        return "**required**"
    if isinstance(field.default, Path):
        return f"`{field.default}`"
    return f"`{field.default!r}`"


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _fields_table(model: type[BaseModel], skip: frozenset[str] = frozenset()) -> list[str]:
    lines = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        lines.append(
            f"| `{name}` | {_type(field.annotation)} | {_default(field)} | {_cell(field.description)} |"
        )
    return lines


def _nested(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    """`model` and every model its fields hold, depth first, each once."""
    seen: list[type[BaseModel]] = []

    def visit(m: type[BaseModel]) -> None:
        if m in seen:
            return
        seen.append(m)
        for field in m.model_fields.values():
            for candidate in _models_in(field.annotation):
                visit(candidate)

    visit(model)
    yield from seen


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def spec_page() -> str:
    lines = [
        "# Model spec reference",
        "",
        "Generated from `shared/driftloop/spec.py`. A spec is one YAML file in `models/`; the",
        "[models page](../concepts/models.md) explains each section with an example. Every field is",
        "checked when the file is loaded; a file that fails is refused alone.",
        "",
    ]
    for model in _nested(spec.ModelSpec):
        lines += [f"## `{model.__name__}`", "", *_paragraph(model.__doc__), *_fields_table(model), ""]
    return "\n".join(lines)


def _paragraph(text: str | None) -> list[str]:
    """A docstring as one paragraph (nothing when there is none)."""
    return [_cell(text), ""] if text else []


def contracts_page() -> str:
    lines = [
        "# Message contracts",
        "",
        "Generated from `shared/driftloop/contracts.py`. Every message is a frozen pydantic model;",
        "producers emit exactly the model and consumers ignore unknown fields. JSON Schemas are in",
        "`schemas/json/`, AsyncAPI documents per service in `schemas/asyncapi/` (`make schemas`).",
        "",
    ]
    for name, model in sorted(CONTRACTS.items()):
        lines += [f"## `{name}`", "", *_paragraph(model.__doc__), *_fields_table(model), ""]
    return "\n".join(lines)


def _parsers(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


def cli_page() -> str:
    lines = [
        "# CLI reference",
        "",
        "Generated from the `driftloop` command's parser (`shared/driftloop/cli.py`); the",
        "[CLI guide](../cli.md) says what each command reports and its exit codes.",
        "",
    ]
    for path, parser in _parsers(cli.build_parser(), "driftloop"):
        parser.prog = path
        lines += [f"## `{path}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def _env_rows(settings: type[ServiceSettings], common: bool) -> list[str]:
    """A row per environment variable: every one (`common`), or those a service adds or changes."""
    rows = []
    for name, field in settings.model_fields.items():
        base = ServiceSettings.model_fields.get(name)
        if not common and base is not None and _default(field) == _default(base):
            continue
        description = field.description or (base.description if base is not None else None)
        if name == "topics":
            for topic, tfield in field.annotation.model_fields.items():  # type: ignore[union-attr]
                variable = f"DRIFTLOOP_TOPICS__{topic.upper()}"
                rows.append(f"| `{variable}` | str | `{tfield.default!r}` | topic name |")
            continue
        rows.append(
            f"| `DRIFTLOOP_{name.upper()}` | {_type(field.annotation)} | {_default(field)} | "
            f"{_cell(description)} |"
        )
    return rows


def settings_page() -> str:
    header = ["| variable | type | default | description |", "|---|---|---|---|"]
    lines = [
        "# Settings reference",
        "",
        "Generated from the settings classes (`shared/driftloop/settings.py`, each",
        "`services/<name>/driftloop_<name>/settings.py`). Every service reads one frozen settings",
        "object from environment variables with the `DRIFTLOOP_` prefix; nested values use `__`.",
        "",
        "## Every service",
        "",
        *header,
        *_env_rows(ServiceSettings, common=True),
        "",
    ]
    for service in SERVICES:
        settings = service_settings(service)
        lines += [f"## {service}", "", f"`{settings.__module__}.{settings.__name__}`: what differs from"]
        lines += ["the common settings above.", "", *header, *_env_rows(settings, common=False), ""]
    return "\n".join(lines)


def _resolve(document: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """`item`, or what its local `$ref` (`#/components/...`) points to."""
    ref = item.get("$ref")
    if ref is None:
        return item
    target: Any = document
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return dict(target)


def registry_api_page() -> str:
    return _api_page("Registry HTTP API", "registry.yaml", "registry")


def inference_api_page() -> str:
    return _api_page("Inference HTTP API (Open Inference Protocol v2)", "inference.json", "inference service")


def _api_page(title: str, name: str, service: str) -> str:
    document = yaml.safe_load((ROOT / "schemas" / "openapi" / name).read_text(encoding="utf-8"))
    lines = [
        f"# {title}",
        "",
        f"Generated from `schemas/openapi/{name}` (the document the test suite fuzzes a live",
        f"{service} with). {_cell(document.get('info', {}).get('description'))}",
        "",
    ]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            lines += [f"## `{method.upper()} {path}`", "", _cell(operation.get("summary"))]
            description = _cell(operation.get("description"))
            if description:
                lines += ["", description]
            parameters = [_resolve(document, p) for p in operation.get("parameters", [])]
            if parameters:
                lines += ["", "| parameter | in | required | description |", "|---|---|---|---|"]
                for p in parameters:
                    lines.append(
                        f"| `{p['name']}` | {p.get('in', '')} | {p.get('required', False)} | "
                        f"{_cell(p.get('description'))} |"
                    )
            responses = operation.get("responses", {})
            if responses:
                lines += ["", "| status | meaning |", "|---|---|"]
                lines += [
                    f"| {code} | {_cell(_resolve(document, r).get('description'))} |"
                    for code, r in responses.items()
                ]
            lines.append("")
    return "\n".join(lines)


PAGES = {
    "reference/spec.md": spec_page,
    "reference/contracts.md": contracts_page,
    "reference/cli.md": cli_page,
    "reference/settings.md": settings_page,
    "reference/registry-api.md": registry_api_page,
    "reference/inference-api.md": inference_api_page,
}


def _write_with_gen_files() -> None:
    import mkdocs_gen_files

    for path, page in PAGES.items():
        with mkdocs_gen_files.open(path, "w") as handle:
            handle.write(page())


if __name__ == "__main__":
    for path, page in PAGES.items():
        print(f"--- {path}\n{page()}")
else:  # mkdocs-gen-files runs the file with another __name__
    _write_with_gen_files()
