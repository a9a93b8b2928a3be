"""A member whose handler never returns, for the kill -9 takeover test.

Usage: python stuck_member.py BOOTSTRAP REDIS_URL TOPIC GROUP STARTED_FILE

Writes the event id to STARTED_FILE when its handler starts, then hangs, holding
the dedup claims of its fetched batch, until it is killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from tests.integration.orchestration.helpers import kafka_settings


async def main(bootstrap: str, redis_url: str, topic: str, group: str, started: str) -> int:
    async def handle(event: dict[str, Any]) -> None:
        await asyncio.to_thread(Path(started).write_text, event["id"])
        await asyncio.Event().wait()

    settings = kafka_settings(bootstrap, redis_url, dedup_processing_ttl_ms=120_000)
    service = (
        StreamServiceBuilder("takeover", settings=settings)
        .with_redis()
        .add_consumer_handler([topic], group, handle)
        .build()
    )
    return await service.serve()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:6])))
