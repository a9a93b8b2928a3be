"""What the benchmarks share: local-only servers, settings, topics, results files."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from core.config.settings import RedisSettings, RedpandaSettings, Settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def server_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with ``--bootstrap``, ``--redis-url`` and ``--out``."""
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    env = os.environ
    parser.add_argument(
        "--bootstrap", default=env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    )
    parser.add_argument("--redis-url", default=env.get("REDIS_URL", "redis://127.0.0.1:16379/0"))
    parser.add_argument("--out", default=None, help="results file (default: results/<name>-<time>)")
    return parser


def check_local(args: argparse.Namespace) -> None:
    """Refuse any broker or Redis that is not on this machine."""
    for address in (args.bootstrap, args.redis_url):
        if "127.0.0.1" not in address and "localhost" not in address:
            raise SystemExit(f"refusing a non-local address: {address}")


def settings_of(args: argparse.Namespace) -> Settings:
    """Settings for a service on the benchmark's broker and Redis."""
    from pydantic import SecretStr

    return Settings().model_copy(
        update={
            "redpanda": RedpandaSettings(bootstrap_servers=args.bootstrap),
            "redis": RedisSettings(url=SecretStr(args.redis_url)),
        }
    )


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create ``topic`` with ``partitions`` partitions."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def delete_topic(bootstrap: str, topic: str) -> None:
    """Delete ``topic``."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


def write_results(args: argparse.Namespace, name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (with the arguments) to ``--out`` or a dated results file."""
    out = Path(args.out) if args.out else RESULTS / f"{name}-{time.strftime('%Y-%m-%d-%H%M')}.json"
    out.write_text(json.dumps({"args": vars(args), **payload}, indent=2))
    print(f"written to {out}")
    return out
