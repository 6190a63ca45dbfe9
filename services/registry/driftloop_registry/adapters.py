"""Registry metadata in Redis (run with AOF): versions, aliases and the run → version index."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RegistryRepository:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def version_of_run(self, model: str, run_id: str) -> int | None:
        raw = await self.redis.hget(f"registry:{model}:runs", run_id)
        return None if raw is None else int(raw)

    async def next_version(self, model: str) -> int:
        return int(await self.redis.incr(f"registry:{model}:next_version"))

    async def save_version(self, model: str, run_id: str, record: dict[str, Any]) -> None:
        """Store a version record and index its run, in one transaction."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd("registry:models", model)
            pipe.hset(f"registry:{model}:versions", str(record["version"]), orjson.dumps(record))
            pipe.hset(f"registry:{model}:runs", run_id, record["version"])
            await pipe.execute()

    async def get_version(self, model: str, version: int) -> dict[str, Any] | None:
        raw = await self.redis.hget(f"registry:{model}:versions", str(version))
        return None if raw is None else orjson.loads(raw)

    async def versions(self, model: str) -> list[dict[str, Any]]:
        raw = await self.redis.hgetall(f"registry:{model}:versions")
        return sorted((orjson.loads(v) for v in raw.values()), key=lambda r: r["version"])

    async def set_alias(self, model: str, alias: str, version: int) -> None:
        await self.redis.hset(f"registry:{model}:aliases", alias, version)

    async def aliases(self, model: str) -> dict[str, int]:
        raw = await self.redis.hgetall(f"registry:{model}:aliases")
        return {_text(k): int(v) for k, v in raw.items()}

    async def models(self) -> list[str]:
        return sorted(_text(m) for m in await self.redis.smembers("registry:models"))
