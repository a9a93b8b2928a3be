"""A group member in its own process, for tests that kill it with SIGKILL.

Usage: ``python member_process.py '<json spec>'`` with keys ``bootstrap``, ``topics``,
``group``, ``options`` (``ConsumerOptions`` fields), ``read`` (records to fetch) and
``commit`` (``[[topic, partition, offset], ...]``). It joins, fetches ``read``
records, commits, prints one JSON line (offsets read, generation, member id) and
then keeps heartbeating until it is killed, or exits by itself after ``linger_s``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from core.config.settings import RedpandaSettings
from core.streaming.clients import ConsumerOptions, create_consumer
from core.streaming.types import TopicPartition


async def main(spec: dict[str, Any]) -> None:
    settings = RedpandaSettings(bootstrap_servers=spec["bootstrap"])
    options = ConsumerOptions(**spec["options"])
    consumer = create_consumer(settings, spec["topics"], spec["group"], options)
    await consumer.start()
    offsets: list[int] = []
    deadline = time.monotonic() + 60
    while len(offsets) < spec["read"]:
        if time.monotonic() > deadline:
            raise SystemExit(f"read only {len(offsets)} records")
        for records in (await consumer.getmany(timeout_ms=200)).values():
            offsets.extend(r.offset for r in records)
    await consumer.commit({TopicPartition(t, p): o for t, p, o in spec["commit"]})
    report = {"offsets": offsets, "generation": consumer.generation, "member": consumer.member_id}
    print(json.dumps(report), flush=True)
    # Stay a live member, heartbeating, until the test kills this process.
    await asyncio.sleep(spec.get("linger_s", 60))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
