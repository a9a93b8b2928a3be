"""Ops endpoint over real HTTP on loopback, correlation through a handler, the test harness."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from core.streaming.correlation import CorrelationLogger
from core.streaming.errors import PermanentError
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from core.streaming.testing import HarnessTimeoutError, StreamTestHarness


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


async def test_health_transitions_and_metrics_over_http() -> None:
    async with StreamTestHarness() as harness:
        gate = asyncio.Event()

        async def handle(event: dict[str, Any]) -> None:
            await gate.wait()

        settings = harness.settings.model_copy(
            update={
                "reliability": harness.settings.reliability.model_copy(
                    update={"max_loop_restarts": 0}
                )
            }
        )
        service = (
            StreamServiceBuilder("ops", harness.config, settings)
            .add_consumer_handler(["in"], "ops.g", handle)
            .with_ops_server(port=0)
            .build()
        )
        assert service.ops_server is not None
        await service.start()
        base = f"http://127.0.0.1:{service.ops_server.port}"
        try:
            async with aiohttp.ClientSession() as http:
                # Ready once the consumer joined its group.
                for _ in range(100):
                    status, _ = await _get(http, f"{base}/health/ready")
                    if status == 200:
                        break
                    await asyncio.sleep(0.01)
                assert status == 200
                assert (await _get(http, f"{base}/health/live"))[0] == 200

                await harness.publish("in", {"n": 1})
                gate.set()
                await harness.wait_idle()
                status, text = await _get(http, f"{base}/metrics")
                assert status == 200
                families = {f.name: f for f in text_string_to_metric_families(text)}
                handled = families["tradestream_messages_handled"].samples
                assert any(s.value == 1 and s.labels["topic"] == "in" for s in handled)

                # Crash the loop once with no restarts allowed: unhealthy.
                async def broken(*args: Any, **kwargs: Any) -> Any:
                    raise RuntimeError("fetch broke")

                service.consumers[0].fetch_partitioned = broken  # type: ignore[method-assign]
                for _ in range(200):
                    if (await _get(http, f"{base}/health/live"))[0] == 503:
                        break
                    await asyncio.sleep(0.01)
                status, body = await _get(http, f"{base}/health/ready")
                assert (await _get(http, f"{base}/health/live"))[0] == 503
                assert status == 503 and '"unhealthy"' in body
        finally:
            await service.stop()


async def test_correlation_flows_from_handled_event_to_produced_event_and_logs() -> None:
    async with StreamTestHarness() as harness:
        holder: dict[str, Any] = {}
        log = CorrelationLogger("relay")

        async def handle(event: dict[str, Any]) -> None:
            log.info("relaying", n=event["data"]["n"])
            await holder["svc"].producer.send("out", None, {"n": event["data"]["n"]}, "relayed")

        service = (
            StreamServiceBuilder("relay", harness.config, harness.settings)
            .add_producer(topics=["out"])
            .add_consumer_handler(["in"], "relay.g", handle)
            .build()
        )
        holder["svc"] = service
        async with harness.running(service):
            with capture_logs() as logs:
                incoming = await harness.publish("in", {"n": 1}, correlation_id="corr-42")
                await harness.wait_idle()
        (out,) = harness.produced("out")
        assert out["correlation_id"] == "corr-42"
        assert out["causation_id"] == incoming
        record = next(entry for entry in logs if entry["event"] == "relaying")
        assert record["correlation_id"] == "corr-42"
        assert record["causation_id"] == incoming
        assert record["service"] == "relay"


async def test_harness_shows_outputs_dead_letters_and_times_out_clearly() -> None:
    async with StreamTestHarness() as harness:
        release = asyncio.Event()

        async def handle(event: dict[str, Any]) -> None:
            if event["data"]["n"] < 0:
                raise PermanentError("negative")
            if event["data"]["n"] == 99:
                await release.wait()

        service = (
            StreamServiceBuilder("h", harness.config, harness.settings)
            .add_consumer_handler(["in"], "h.g", handle)
            .build()
        )
        async with harness.running(service):
            await harness.publish("in", {"n": 1})
            await harness.publish("in", {"n": -1})
            await harness.wait_idle()
            (dead,) = harness.dead_letters("in")
            assert dead.error_type is not None and dead.error_type.endswith("PermanentError")
            assert dead.header("dlq.original.topic") == "in"
            await harness.publish("in", {"n": 99})
            with pytest.raises(
                HarnessTimeoutError, match=r"did not catch up: h\.g:in: 1 in flight"
            ):
                await harness.wait_idle(timeout_s=0.2)
            release.set()
            await harness.wait_idle()
