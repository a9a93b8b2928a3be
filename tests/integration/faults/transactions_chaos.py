"""Kafka's ``transactions_test`` in our terms: a copier killed with SIGKILL under load.

An input topic is preloaded with N envelopes. A copier (``eos_copier.py``, a
process of its own) writes one output per input. While it copies, the driver
kills it with SIGKILL at evenly spaced points of progress and starts it again
each time. When the group has committed the whole input, a ``read_committed``
verifier reads the output and compares the input ids with the output ids:
duplicates, losses, strays.

The same run without exactly-once is the control: it shows the duplicates
exactly-once avoids. Run the bigger variant with::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 .venv/bin/python -m \
        tests.integration.faults.transactions_chaos --inputs 200000 --kills 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from uuid import uuid4

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as KTP
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from core.config.settings import RedpandaSettings
from core.streaming.topic_reader import read_topic

REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass
class ChaosReport:
    """What one run did and what the verifier found."""

    guarantee: str
    inputs: int
    kills: int
    outputs_committed: int = 0
    unique_outputs: int = 0
    duplicates: int = 0
    missing: int = 0
    strays: int = 0
    records_written: int = 0  # output log end offsets: committed, aborted and markers
    seconds: float = 0.0
    kill_points: list[int] = field(default_factory=list)

    def line(self) -> str:
        """One JSON line for logs and docs."""
        return json.dumps(asdict(self))


def _envelope(event_id: str, n: int) -> bytes:
    return orjson.dumps(
        {
            "id": event_id,
            "type": "chaos.input",
            "timestamp": "2026-01-01T00:00:00Z",
            "source": "chaos-driver",
            "correlation_id": None,
            "causation_id": None,
            "schema_version": 1,
            "data": {"n": n},
        }
    )


async def _create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


async def _preload(bootstrap: str, topic: str, count: int) -> list[str]:
    ids = [str(uuid4()) for _ in range(count)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    await producer.start()
    try:
        acks = [
            await producer.send(topic, _envelope(event_id, n), key=str(n % 101).encode())
            for n, event_id in enumerate(ids)
        ]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    return ids


class _Offsets:
    """Reads log end offsets of the output and committed offsets of the group."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )

    async def __aenter__(self) -> _Offsets:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def ends(self, topic: str, partitions: int) -> int:
        found = await self.consumer.end_offsets([KTP(topic, p) for p in range(partitions)])
        return sum(found.values())

    async def committed(self, topic: str, partitions: int) -> int:
        total = 0
        for p in range(partitions):
            total += await self.consumer.committed(KTP(topic, p)) or 0
        return total


async def _start_copier(spec: dict[str, object]) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.faults.eos_copier",
        json.dumps(spec),
        cwd=str(REPO_ROOT),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    if line.strip() != b"ready":
        raise RuntimeError(f"copier did not start (exit {await process.wait()})")
    return process


async def run_chaos(
    bootstrap: str,
    *,
    inputs: int,
    kills: int,
    guarantee: str,
    partitions: int = 3,
    commit_interval_ms: int = 1_000,
    timeout_s: float = 300.0,
) -> ChaosReport:
    """One bounded run: preload, copy under ``kills`` SIGKILLs, verify; all on loopback."""
    prefix = f"chaos-{uuid4().hex[:8]}"
    source, sink, group = f"{prefix}-in", f"{prefix}-out", f"{prefix}-copier"
    await _create_topics(bootstrap, [source, sink], partitions)
    ids = await _preload(bootstrap, source, inputs)
    report = ChaosReport(guarantee, inputs, kills)
    spec = {
        "bootstrap": bootstrap,
        "source": source,
        "sink": sink,
        "group": group,
        "guarantee": guarantee,
        "commit_interval_ms": commit_interval_ms,
    }
    started = time.monotonic()
    deadline = started + timeout_s
    process = await _start_copier(spec)
    try:
        async with _Offsets(bootstrap, group) as offsets:
            for k in range(kills):
                target = inputs * (k + 1) // (kills + 1)
                while await offsets.ends(sink, partitions) < target:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"copier stuck before kill {k + 1}")
                    await asyncio.sleep(0.02)
                process.send_signal(signal.SIGKILL)
                await process.wait()
                report.kill_points.append(await offsets.ends(sink, partitions))
                process = await _start_copier(spec)
            while await offsets.committed(source, partitions) < inputs:
                if time.monotonic() > deadline:
                    raise TimeoutError("the input was not committed in time")
                await asyncio.sleep(0.1)
            report.records_written = await offsets.ends(sink, partitions)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
    report.seconds = round(time.monotonic() - started, 1)
    records = await read_topic(
        RedpandaSettings(bootstrap_servers=bootstrap),
        sink,
        timeout_s=60,
        isolation_level="read_committed",
    )
    seen = Counter(orjson.loads(r.value or b"{}")["data"]["src"] for r in records)
    expected = set(ids)
    report.outputs_committed = len(records)
    report.unique_outputs = len(seen)
    report.duplicates = sum(c - 1 for c in seen.values())
    report.missing = len(expected - set(seen))
    report.strays = len(set(seen) - expected)
    return report


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=200_000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--commit-interval-ms", type=int, default=1_000)
    parser.add_argument("--control", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    guarantees = ["exactly_once"] + (["at_least_once"] if args.control else [])
    for guarantee in guarantees:
        report = await run_chaos(
            bootstrap,
            inputs=args.inputs,
            kills=args.kills,
            guarantee=guarantee,
            partitions=args.partitions,
            commit_interval_ms=args.commit_interval_ms,
            timeout_s=max(300.0, args.inputs / 200),
        )
        print(report.line(), flush=True)


if __name__ == "__main__":
    asyncio.run(_main())
