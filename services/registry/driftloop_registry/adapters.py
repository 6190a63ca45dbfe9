"""Registry state in Redis (run with AOF): versions, aliases, champion history, command outcomes;
and model cards written as files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis


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


class RegistryRepository:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._reserve = redis.register_script(_RESERVE)
        self._push_champion = redis.register_script(_PUSH_CHAMPION)

    async def reserve_version(self, model: str, run_id: str) -> int:
        """The version number of a training run: the same every time the run is registered again
        (a redelivery, a retry), so a candidate never takes two numbers."""
        keys = [f"registry:{model}:runs", f"registry:{model}:next_version"]
        return int(await self._reserve(keys=keys, args=[run_id]))

    async def save_version(self, model: str, record: dict[str, Any]) -> None:
        """Store a version record and index its training run, in one transaction."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd("registry:models", model)
            pipe.hset(f"registry:{model}:versions", str(record["version"]), orjson.dumps(record))
            pipe.hset(f"registry:{model}:runs", record["trained"]["run_id"], record["version"])
            await pipe.execute()

    async def get_version(self, model: str, version: int) -> dict[str, Any] | None:
        raw = await self.redis.hget(f"registry:{model}:versions", str(version))
        return None if raw is None else orjson.loads(raw)

    async def versions(self, model: str) -> list[dict[str, Any]]:
        raw = await self.redis.hgetall(f"registry:{model}:versions")
        return sorted((orjson.loads(v) for v in raw.values()), key=lambda r: r["version"])

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
