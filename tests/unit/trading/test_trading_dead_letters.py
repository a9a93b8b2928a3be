"""Values that are not envelopes, on any trading topic, end up dead-lettered with the reason."""

from __future__ import annotations

import pytest

from core.config.settings import Settings, TradingSettings
from core.schemas.topics import TopicMap, TopicNames
from core.streaming.testing import StreamTestHarness
from services.registry import build_service

PAPER = TopicMap("paper")
FOREIGN = b'{"id": "cust-42", "qty": 1}'
OTHER_TYPE = b'{"id": "e", "type": "other", "source": "s", "data": {}}'


@pytest.mark.parametrize(
    ("service", "topic"),
    [
        ("trading_engine", PAPER.signals_validated()),
        ("trading_engine", TopicNames.MARKET_TICKS),
        ("signal_validator", PAPER.signals_raw()),
        ("strategy_runner", TopicNames.MARKET_TICKS),
    ],
)
async def test_a_foreign_object_is_dead_lettered_never_dropped(service: str, topic: str) -> None:
    base = Settings(trading=TradingSettings(market_always_open=True))
    async with StreamTestHarness(base) as harness:
        async with harness.running(build_service(service, harness.settings)):
            await harness.publish_raw(topic, b'{"id": "cust-42", "qty": 1}', key=b"x")
            await harness.publish_raw(
                topic, b'{"id": "e", "type": "other", "source": "s", "data": {}}'
            )
            await harness.wait_idle()
        dead = {d.value: d.header("dlq.exception.message") for d in harness.dead_letters(topic)}
        assert set(dead) == {FOREIGN, OTHER_TYPE}
        assert dead[FOREIGN].startswith(
            f"not an event envelope on {topic} (missing or empty type, source"
        )
        assert dead[OTHER_TYPE].startswith(f"unexpected event type 'other' on {topic}")
        assert {d.header("dlq.service") for d in harness.dead_letters(topic)} == {service}
