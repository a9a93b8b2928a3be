"""A handler's sends are part of its message (delivery contract 3).

Before an input offset is committed, every send its handler started is
acknowledged; a send that fails fails that input (retry, then dead letter).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from core.streaming.clients import ProducerClient, create_producer
from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.testing import StreamTestHarness
from core.streaming.types import RecordMetadata
from tests.contract.conftest import Backend
from tests.contract.helpers import service


async def test_an_enqueued_output_refused_at_its_ack_fails_the_input(backend: Backend) -> None:
    source = await backend.create_topic("in")
    out = await backend.create_topic("out", configs={"max.message.bytes": "2000"})
    attempts: dict[int, int] = {}
    orchestrator: ServiceOrchestrator

    async def handle(event: dict[str, Any]) -> None:
        n = event["data"]["n"]
        attempts[n] = attempts.get(n, 0) + 1
        padding = "x" * (5_000 if n == 2 else 10)
        await orchestrator.producer.enqueue(out, str(n), {"n": n, "pad": padding})

    orchestrator = service(
        backend.settings,
        handle,
        topics=[source],
        group=backend.topic("g"),
        dedup=False,
        producer=True,
        retry_attempts=3,
        retry_backoff_initial_ms=1,
    )
    harness = backend.harness
    async with harness.running(orchestrator):
        for n in (1, 2, 3):
            await harness.publish(source, {"n": n}, key="k")
        await harness.wait_idle(timeout_s=30)
    outputs = sorted(e["data"]["n"] for e in await harness.read(out))
    dead = await harness.read_dead_letters(source)
    assert outputs == [1, 3], "the other inputs' outputs arrive, the refused one never"
    assert len(dead) == 1 and b'"n":2' in (dead[0].value or b"")
    assert (dead[0].error_type or "").endswith("OutputFailedError")
    assert "TooLarge" in (dead[0].header("dlq.exception.message") or "")
    assert attempts[2] == 3, "a failed output is retried, then dead-lettered"


class _FlakyAcks:
    """A producer client whose first ``failures`` acknowledgements fail like a timeout.

    It wraps the real client of the embedded broker; only the acknowledgement is
    made to fail, as a broker that timed out the request would.
    """

    def __init__(self, inner: ProducerClient, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def send(self, *args: Any, **kwargs: Any) -> Awaitable[RecordMetadata]:
        ack = await self.inner.send(*args, **kwargs)
        if self.failures <= 0:
            return ack
        self.failures -= 1
        await ack  # the record is stored, but the client never hears of it
        failed: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        failed.set_exception(TimeoutError("request timed out"))
        return failed


async def test_an_output_whose_ack_fails_once_is_sent_again_by_the_retry() -> None:
    attempts = 0
    orchestrator: ServiceOrchestrator

    async def handle(event: dict[str, Any]) -> None:
        nonlocal attempts
        attempts += 1
        await orchestrator.producer.enqueue("out", "k", {"attempt": attempts})

    async with StreamTestHarness() as harness:
        orchestrator = service(
            harness.settings, handle, producer=True, retry_attempts=3, retry_backoff_initial_ms=1
        )
        flaky = MessageProducer(
            harness.config,
            "svc",
            client_factory=lambda *a, **k: _FlakyAcks(create_producer(*a, **k), failures=1),
        )
        orchestrator.producers[0] = flaky
        async with harness.running(orchestrator):
            await harness.publish("in", {"n": 1}, key="k")
            await harness.wait_idle(timeout_s=30)
        delivered = [e["data"]["attempt"] for e in harness.produced("out")]
        assert harness.dead_letters("in") == []
    assert attempts == 2
    assert delivered == [1, 2], "at-least-once: the unacknowledged first output may exist too"
