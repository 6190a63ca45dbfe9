"""Wiring of the registry: `models.trained` → gate → `models.lifecycle`; `models.commands` (promote,
approve, rollback, tag) → `models.lifecycle`; read-only JSON API and web console (`/ui`)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

from faststream.asgi import AsgiResponse, get

from driftloop.artifacts import ArtifactStore
from driftloop.connections import object_store, redis_client
from driftloop.contracts import LifecycleEvent, ModelTrained, RegistryCommand, SpecEvent
from driftloop.runtime import ServiceApp, build_app, follow_specs, json_response, service_main
from driftloop.service import Consumes, Service
from driftloop.spec import MODEL_NAME
from driftloop_registry.adapters import CardWriter, RedisRegistryRepository
from driftloop_registry.domain import render_card
from driftloop_registry.handlers import SERVICE, Registry
from driftloop_registry.settings import RegistrySettings
from driftloop_registry.web import Console


def _query(scope: Any) -> dict[str, str]:
    parsed = parse_qs(scope.get("query_string", b"").decode("utf-8", "replace"))
    return {k: v[0] for k, v in parsed.items()}


def create_app(settings: RegistrySettings) -> ServiceApp:
    topics = settings.topics
    specs = follow_specs(SERVICE, settings)
    redis = redis_client(settings)
    registry = Registry(
        specs.book,
        RedisRegistryRepository(redis),
        ArtifactStore(object_store(settings)),
        CardWriter(settings.data_dir / "cards"),
        topics,
    )
    one_at_a_time = asyncio.Lock()
    service = Service(
        SERVICE,
        settings,
        [  # one change at a time: each batch is handled, announced and committed before the next
            Consumes({topic: contract}, group, handle, pipelined=False, lock=one_at_a_time)
            for topic, contract, group, handle in (
                (topics.models_trained, ModelTrained, settings.group_id, registry.handle),
                (
                    topics.models_commands,
                    RegistryCommand,
                    settings.commands_group_id,
                    registry.handle_commands,
                ),
            )
        ]
        + [
            Consumes(
                {topics.models_specs: SpecEvent}, settings.specs_group_id, registry.keep_specs, hot=False
            )
        ],
        produces={topics.models_lifecycle: LifecycleEvent},
        specs=specs,
    )

    @get(description="Models with their aliases and version counts.")
    async def models(scope: Any) -> AsgiResponse:
        return json_response(await registry.list_models())

    @get(description="Versions of `?model=`, oldest first, with status, metrics and tags.")
    async def versions(scope: Any) -> AsgiResponse:
        model = _query(scope).get("model", "")
        if not MODEL_NAME.fullmatch(model):
            return json_response({"error": "model must be a model name"}, 400)
        return json_response(await registry.list_versions(model))

    @get(description="Spec versions and retirements of `?model=`, oldest first, the one in force marked.")
    async def specs_of(scope: Any) -> AsgiResponse:
        model = _query(scope).get("model", "")
        if not MODEL_NAME.fullmatch(model):
            return json_response({"error": "model must be a model name"}, 400)
        return json_response(await registry.spec_history(model))

    @get(description="Model card (full lineage) of `?model=&version=`; `&format=md` for Markdown.")
    async def card(scope: Any) -> AsgiResponse:
        query = _query(scope)
        model = query.get("model", "")
        if not MODEL_NAME.fullmatch(model):
            return json_response({"error": "model must be a model name"}, 400)
        version = query.get("version", "")
        if not (version.isascii() and version.isdigit() and 0 < len(version) <= 9):
            return json_response({"error": "version must be a positive integer"}, 400)
        if query.get("format", "json") not in ("json", "md"):
            return json_response({"error": "format must be json or md"}, 400)
        record = await registry.card(model, int(version))
        if record is None:
            return json_response({"error": "not found"}, 404)
        if query.get("format") == "md":
            markdown = render_card(record, record["status"]).encode()
            return AsgiResponse(markdown, 200, headers={"content-type": "text/markdown; charset=utf-8"})
        return json_response(record)

    return build_app(
        service,
        on_shutdown=[redis.aclose],
        routes=[
            ("/v1/models", models),
            ("/v1/versions", versions),
            ("/v1/card", card),
            ("/v1/specs", specs_of),
        ],
        mounts=[("/ui", Console(registry, settings.prometheus_url))],
    )


main = service_main(RegistrySettings, create_app)  # the `driftloop-registry` command


if __name__ == "__main__":
    main()
