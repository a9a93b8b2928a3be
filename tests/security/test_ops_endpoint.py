"""The ops endpoint: loopback by default, read-only, cheap liveness, bounded readiness.

The last test pauses a real (private) Kafka broker with SIGSTOP, the stall the
liveness split is for: liveness keeps answering at once, readiness turns 503
within its bound, and both recover when the broker continues.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import aiohttp
import pytest

from core.config.settings import Settings
from core.streaming.orchestration.ops_server import OpsServer
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from core.streaming.testing import StreamTestHarness
from tests.conftest import PrivateKafka
from tests.integration.orchestration.helpers import kafka_settings


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any], float]:
    began = time.monotonic()
    async with http.get(url) as response:
        body = await response.json() if response.content_type == "application/json" else {}
        return response.status, body, time.monotonic() - began


def _service(settings: Settings, name: str = "ops-sec") -> ServiceOrchestrator:
    async def handle(event: dict[str, Any]) -> None:
        return None

    return (
        StreamServiceBuilder(name, settings.redpanda, settings)
        .add_consumer_handler([f"{name}.in"], f"{name}.g", handle)
        .with_ops_server(port=0)
        .build()
    )


def test_ops_endpoint_binds_loopback_by_default() -> None:
    assert Settings().observability.http_host == "127.0.0.1"
    service = _service(Settings())
    assert service.ops_server is not None and service.ops_server.host == "127.0.0.1"


async def test_only_reads_are_served() -> None:
    async with StreamTestHarness() as harness:
        service = _service(harness.settings)
        await service.start()
        try:
            assert service.ops_server is not None
            base = f"http://127.0.0.1:{service.ops_server.port}"
            async with aiohttp.ClientSession() as http:
                for path in ("/health/live", "/health/ready", "/metrics"):
                    async with http.get(base + path) as response:
                        assert response.status in (200, 503)
                    for method in ("POST", "PUT", "PATCH", "DELETE"):
                        async with http.request(method, base + path) as response:
                            assert response.status == 405, (method, path)
                for path in ("/", "/admin", "/stop", "/health", "/debug"):
                    async with http.get(base + path) as response:
                        assert response.status == 404, path
        finally:
            await service.stop()


async def test_liveness_does_not_wait_for_a_stalled_dependency() -> None:
    stalled = asyncio.Event()

    async def health() -> dict[str, Any]:
        stalled.set()
        await asyncio.sleep(3600)  # a broker that never answers
        return {"ready": True}

    server = OpsServer(
        health,
        lambda: [],
        live=lambda: {"status": "running", "live": True},
        port=0,
        ready_timeout_s=0.5,
    )
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as http:
            status, body, took = await _get(http, base + "/health/live")
            assert status == 200 and body["live"] is True and took < 0.3
            assert not stalled.is_set()  # liveness never called the dependency check
            status, body, took = await _get(http, base + "/health/ready")
            assert status == 503 and body["ready"] is False and 0.5 <= took < 2.0
            assert "did not answer within 0.5 s" in body["error"]
    finally:
        await server.stop()


@pytest.mark.kafka
@pytest.mark.timeout(150)
async def test_paused_broker_keeps_liveness_and_drops_readiness(
    private_kafka: PrivateKafka,
) -> None:
    settings = kafka_settings(private_kafka.bootstrap)
    service = _service(settings, "ops-stall")
    await service.start()
    pid = int((private_kafka.state_dir / "kafka" / "kafka.pid").read_text())
    try:
        assert service.ops_server is not None
        base = f"http://127.0.0.1:{service.ops_server.port}"
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                if (await _get(http, base + "/health/ready"))[0] == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("never ready")
            os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(0.5)
                status, body, took = await _get(http, base + "/health/live")
                assert status == 200 and body["live"] is True and took < 0.5
                status, body, took = await _get(http, base + "/health/ready")
                assert status == 503 and took < 4.0
                kafka_state = body.get("components", {}).get("connections", {}).get("kafka")
                assert kafka_state is None or kafka_state.startswith("error")
            finally:
                os.kill(pid, signal.SIGCONT)
            for _ in range(300):
                if (await _get(http, base + "/health/ready"))[0] == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("not ready again after the broker continued")
    finally:
        await service.stop()
