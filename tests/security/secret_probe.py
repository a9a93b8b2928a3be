"""A service run at DEBUG over SASL_SSL and ACL Redis, printing all it can expose.

    python -m tests.security.secret_probe FORMAT TOPIC

Settings come from ``TRADESTREAM_*``. The process logs at DEBUG in FORMAT
(``json`` or ``console``), round-trips events through a service with dedup,
prints the ops endpoint's ``/health/live``, ``/health/ready`` and ``/metrics``
on stdout, logs an exception raised in a frame whose locals hold the settings
and the password, and logs a failed start with a wrong password. The test
(``test_no_secret_leaks``) greps everything it printed for the secrets.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import aiohttp
from pydantic import SecretStr

from core.config.settings import Settings, load_settings
from core.streaming.errors import ConnectionSetupError
from core.streaming.infrastructure.connection_manager import ConnectionManager
from core.streaming.logging_setup import configure_logging
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder

logger = logging.getLogger("secret_probe")
EVENTS = 5


def _explode(settings: Settings) -> None:
    password = settings.redpanda.sasl_password
    url = settings.redis.url.get_secret_value()
    raise RuntimeError(f"handler failed while holding {type(password).__name__} and a URL {url}")


async def main(fmt: str, topic: str) -> None:
    settings = load_settings()
    configure_logging("json" if fmt == "json" else "console", "DEBUG")
    handled: list[str] = []
    done = asyncio.Event()

    async def handle(event: dict[str, Any]) -> None:
        handled.append(event["id"])
        if len(handled) >= EVENTS:
            done.set()

    service = (
        StreamServiceBuilder("secret-probe", settings.redpanda, settings)
        .with_redis()
        .add_producer(topics=[topic])
        .add_consumer_handler([topic], f"{topic}.group", handle)
        .with_ops_server(host="127.0.0.1", port=0)
        .build()
    )
    await service.start()
    try:
        for i in range(EVENTS):
            await service.producer.send(topic, f"k{i}", {"n": i}, "probe.event")
        await asyncio.wait_for(done.wait(), 60)
        assert service.ops_server is not None
        base = f"http://127.0.0.1:{service.ops_server.port}"
        async with aiohttp.ClientSession() as http:
            for path in ("/health/live", "/health/ready", "/metrics"):
                async with http.get(base + path) as response:
                    print(f"== {path} {response.status}")
                    print(await response.text())
        try:
            _explode(settings)
        except RuntimeError:
            logger.exception("a handler-like failure")
    finally:
        await service.stop()

    wrong = settings.model_copy(
        update={
            "redpanda": settings.redpanda.model_copy(
                update={"sasl_password": SecretStr("wrong-password-123"), "connect_timeout_s": 10}
            )
        }
    )
    manager = ConnectionManager(wrong, use_redis=False)
    try:
        await manager.start()
    except ConnectionSetupError:
        logger.exception("start with a wrong password failed")
    finally:
        await manager.stop()
    print(f"== handled {len(handled)}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
