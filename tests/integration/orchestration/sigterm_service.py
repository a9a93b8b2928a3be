"""A service process for the SIGTERM test: logs each handled offset, serves until signalled.

Usage: python sigterm_service.py BOOTSTRAP TOPIC GROUP OUTFILE
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, TextIO

from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from tests.integration.orchestration.helpers import kafka_settings


async def main(bootstrap: str, topic: str, group: str, out: TextIO) -> int:
    async def handle(event: dict[str, Any]) -> None:
        await asyncio.sleep(0.002)
        out.write(f"{event['data']['p']} {event['data']['i']}\n")

    settings = kafka_settings(bootstrap, drain_timeout_s=10.0, commit_interval_ms=200)
    service = (
        StreamServiceBuilder("sigterm-test", settings=settings)
        .add_consumer_handler([topic], group, handle)
        .build()
    )
    return await service.serve()


if __name__ == "__main__":
    with open(sys.argv[4], "a", buffering=1) as handled_log:
        sys.exit(asyncio.run(main(*sys.argv[1:4], handled_log)))
