"""Registry state in Redis (run with AOF): versions, aliases, champion history, command outcomes;
and model cards written as files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from driftloop_registry.domain import ModelVersion


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# KEYS: the model's runs hash, its version counter; ARGV: the run id. The run's version: the one
# it was given before (a candidate handled again), else the next number, recorded at once.
_RESERVE = """
local known = redis.call('HGET', KEYS[1], ARGV[1])
if known then return tonumber(known) end
local version = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], version)
return version
"""
# KEYS: the model's champion history; ARGV: a version, appended unless it is the last one already
_PUSH_CHAMPION = """
local last = redis.call('LINDEX', KEYS[1], -1)
if last ~= ARGV[1] then redis.call('RPUSH', KEYS[1], ARGV[1]) end
return 0
"""


class RedisRegistryRepository:
    """The registry's store in Redis (`driftloop_registry.domain.RegistryRepository`)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._reserve = redis.register_script(_RESERVE)
        self._push_champion = redis.register_script(_PUSH_CHAMPION)

    async def reserve_version(self, model: str, run_id: str) -> int:
        """The version number of a training run: the same every time the run is registered again
        (a redelivery, a retry), so a candidate never takes two numbers."""
        keys = [f"registry:{model}:runs", f"registry:{model}:next_version"]
        return int(await self._reserve(keys=keys, args=[run_id]))

    async def save(self, version: ModelVersion) -> None:
        """Store a version and index its training run, in one transaction."""
        model = version.model
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd("registry:models", model)
            pipe.hset(f"registry:{model}:versions", str(version.version), orjson.dumps(version.record()))
            pipe.hset(f"registry:{model}:runs", version.trained.run_id, version.version)
            await pipe.execute()

    async def get(self, model: str, version: int) -> ModelVersion | None:
        raw = await self.redis.hget(f"registry:{model}:versions", str(version))
        return None if raw is None else ModelVersion.from_record(orjson.loads(raw))

    async def versions(self, model: str) -> list[ModelVersion]:
        raw = await self.redis.hgetall(f"registry:{model}:versions")
        return sorted((ModelVersion.from_record(orjson.loads(v)) for v in raw.values()), key=_number)

    async def numbers(self, model: str) -> list[int]:
        return sorted(int(k) for k in await self.redis.hkeys(f"registry:{model}:versions"))

    async def set_alias(self, model: str, alias: str, version: int | None) -> None:
        if version is None:
            await self.redis.hdel(f"registry:{model}:aliases", alias)
        else:
            await self.redis.hset(f"registry:{model}:aliases", alias, version)

    async def aliases(self, model: str) -> dict[str, int]:
        raw = await self.redis.hgetall(f"registry:{model}:aliases")
        return {_text(k): int(v) for k, v in raw.items()}

    async def push_champion(self, model: str, version: int) -> None:
        """Append to the champion history (not twice in a row: a change carried out again)."""
        await self._push_champion(keys=[f"registry:{model}:champions"], args=[str(version)])

    async def champion_history(self, model: str) -> list[int]:
        return [int(v) for v in await self.redis.lrange(f"registry:{model}:champions", 0, -1)]

    async def models(self) -> list[str]:
        return sorted(_text(m) for m in await self.redis.smembers("registry:models"))

    async def command_outcome(self, command_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hget("registry:commands", command_id)
        return None if raw is None else orjson.loads(raw)

    async def save_command_outcome(self, command_id: str, event: dict[str, Any]) -> None:
        await self.redis.hset("registry:commands", command_id, orjson.dumps(event))

    async def keep_spec_event(self, model: str, key: str, event: dict[str, Any]) -> None:
        await self.redis.hsetnx(f"registry:{model}:specs", key, orjson.dumps(event))

    async def spec_events(self, model: str) -> list[dict[str, Any]]:
        raw = await self.redis.hgetall(f"registry:{model}:specs")
        return sorted((orjson.loads(v) for v in raw.values()), key=_when)


class InMemoryRegistryRepository:
    """The registry's store in memory (`driftloop_registry.domain.RegistryRepository`), for unit
    tests: the same answers as Redis, versions kept as their stored JSON so nothing is shared."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, int]] = {}
        self.records: dict[str, dict[int, bytes]] = {}
        self.alias: dict[str, dict[str, int]] = {}
        self.champions: dict[str, list[int]] = {}
        self.outcomes: dict[str, bytes] = {}
        self.specs: dict[str, dict[str, bytes]] = {}

    async def reserve_version(self, model: str, run_id: str) -> int:
        runs = self.runs.setdefault(model, {})
        if run_id not in runs:
            runs[run_id] = max(runs.values(), default=0) + 1
        return runs[run_id]

    async def save(self, version: ModelVersion) -> None:
        self.records.setdefault(version.model, {})[version.version] = orjson.dumps(version.record())
        self.runs.setdefault(version.model, {})[version.trained.run_id] = version.version

    async def get(self, model: str, version: int) -> ModelVersion | None:
        raw = self.records.get(model, {}).get(version)
        return None if raw is None else ModelVersion.from_record(orjson.loads(raw))

    async def versions(self, model: str) -> list[ModelVersion]:
        stored = self.records.get(model, {})
        return [ModelVersion.from_record(orjson.loads(stored[v])) for v in sorted(stored)]

    async def numbers(self, model: str) -> list[int]:
        return sorted(self.records.get(model, {}))

    async def set_alias(self, model: str, alias: str, version: int | None) -> None:
        aliases = self.alias.setdefault(model, {})
        if version is None:
            aliases.pop(alias, None)
        else:
            aliases[alias] = version

    async def aliases(self, model: str) -> dict[str, int]:
        return dict(self.alias.get(model, {}))

    async def push_champion(self, model: str, version: int) -> None:
        history = self.champions.setdefault(model, [])
        if not history or history[-1] != version:
            history.append(version)

    async def champion_history(self, model: str) -> list[int]:
        return list(self.champions.get(model, []))

    async def models(self) -> list[str]:
        return sorted(self.records)

    async def command_outcome(self, command_id: str) -> dict[str, Any] | None:
        raw = self.outcomes.get(command_id)
        return None if raw is None else orjson.loads(raw)

    async def save_command_outcome(self, command_id: str, event: dict[str, Any]) -> None:
        self.outcomes[command_id] = orjson.dumps(event)

    async def keep_spec_event(self, model: str, key: str, event: dict[str, Any]) -> None:
        self.specs.setdefault(model, {}).setdefault(key, orjson.dumps(event))

    async def spec_events(self, model: str) -> list[dict[str, Any]]:
        return sorted((orjson.loads(v) for v in self.specs.get(model, {}).values()), key=_when)


def _number(version: ModelVersion) -> int:
    return version.version


def _when(event: dict[str, Any]) -> str:
    """When a spec event was published (ISO 8601 in UTC: sorts as text)."""
    return str(event.get("applied_at") or event.get("retired_at") or "")


class CardWriter:
    """Writes each version's model card as `<model>/v<N>.json` and `.md` under a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, model: str, version: int, card: dict[str, Any], markdown: str) -> None:
        folder = self.root / model
        folder.mkdir(parents=True, exist_ok=True)
        for suffix, data in ((".json", orjson.dumps(card, option=orjson.OPT_INDENT_2)),
                             (".md", markdown.encode())):  # fmt: skip
            fd, tmp = tempfile.mkstemp(dir=folder)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, folder / f"v{version}{suffix}")
