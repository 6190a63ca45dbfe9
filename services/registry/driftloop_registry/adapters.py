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


class RegistryRepository:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def version_of_run(self, model: str, run_id: str) -> int | None:
        raw = await self.redis.hget(f"registry:{model}:runs", run_id)
        return None if raw is None else int(raw)

    async def next_version(self, model: str) -> int:
        return int(await self.redis.incr(f"registry:{model}:next_version"))

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
        await self.redis.rpush(f"registry:{model}:champions", version)

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
