"""A handler's exception of any kind is a failure of that message, not of its lane.

(Delivery contract 8, 9.) ``CancelledError`` a handler raises itself and other
``BaseException`` subclasses are retried, then dead-lettered; only our own
shutdown's cancellation and ``KeyboardInterrupt``/``SystemExit`` stop a flow.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core.streaming.testing import StreamTestHarness
from tests.contract.helpers import service


class Fatal(BaseException):
    """A ``BaseException`` that is not an ``Exception``."""


@pytest.mark.parametrize("raised", [asyncio.CancelledError, Fatal, GeneratorExit])
async def test_a_handler_raising_a_base_exception_fails_only_its_message(
    raised: type[BaseException],
) -> None:
    handled: list[int] = []
    attempts = 0

    async def handle(event: dict[str, Any]) -> None:
        nonlocal attempts
        n = event["data"]["n"]
        if n == 1:
            attempts += 1
            raise raised("from the handler")
        handled.append(n)

    async with StreamTestHarness() as harness:
        orchestrator = service(
            harness.settings, handle, retry_attempts=2, retry_backoff_initial_ms=1
        )
        async with harness.running(orchestrator):
            for n in range(4):
                await harness.publish("in", {"n": n}, key="same")
            await harness.wait_idle(timeout_s=10)
            health = await orchestrator.health()
        dead = harness.dead_letters("in")
    assert handled == [0, 2, 3]
    assert attempts == 2
    assert [(d.error_type or "").rsplit(".", 1)[-1] for d in dead] == ["HandlerCancelledError"]
    assert raised.__name__ in dead[0].header("dlq.exception.message")
    assert health["live"] and health["ready"]
