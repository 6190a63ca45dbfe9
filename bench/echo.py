"""The ceiling for `bench-inference`: a batched aiokafka echo on the same loop as the inference hot
path (`driftloop.fastpath`), answering each request with a same-size response and no model."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from aiokafka import ConsumerRecord

from driftloop.fastpath import FastPath, Output
from driftloop.settings import ServiceSettings


async def main(requests: str, responses: str) -> None:
    settings = ServiceSettings()
    loop = FastPath(settings, "echo", requests, "bench-echo")

    async def echo(records: Sequence[ConsumerRecord]) -> list[Output]:
        return [Output(responses, r.key, r.value or b"") for r in records]

    await loop.start(echo)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
