"""Signal validation: the pure rules, the id registry, and the handler's verdicts."""

from __future__ import annotations

from enum import Enum
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from core.config.settings import Settings, TradingSettings
from core.schemas.events import (
    EventType,
    MarketTick,
    OrderType,
    SignalAction,
    TradingSignal,
    generate_uuid7,
)
from core.streaming.errors import PermanentError
from services.signal_validator.service import (
    DUPLICATE_SIGNAL_ID,
    Claim,
    SignalIdRegistry,
    SignalRules,
    SignalValidatorService,
    schema_error_summary,
)

INSTRUMENTS = {"RELIANCE": 738561, "TCS": 2953217}


def sig(
    *,
    symbol: str = "RELIANCE",
    token: int | None = None,
    quantity: int = 10,
    price: float | None = None,
    signal_id: str | None = None,
) -> TradingSignal:
    return TradingSignal(
        signal_id=signal_id or generate_uuid7(),
        strategy_id="momentum",
        instrument_token=INSTRUMENTS.get(symbol, 1) if token is None else token,
        symbol=symbol,
        action=SignalAction.BUY,
        quantity=quantity,
        order_type=OrderType.LIMIT if price is not None else OrderType.MARKET,
        price=price,
    )


@pytest.fixture
def rules() -> SignalRules:
    return SignalRules(INSTRUMENTS, max_quantity=1_000, max_notional=100_000.0)


# ---------------------------------------------------------------------- rules


def test_a_valid_signal_passes(rules: SignalRules) -> None:
    assert rules.check(sig(quantity=10), reference_price=2_900.0) is None


def test_unknown_instrument(rules: SignalRules) -> None:
    assert rules.check(sig(symbol="ACME"), 10.0) == "unknown instrument ACME"


def test_token_must_match_the_symbol(rules: SignalRules) -> None:
    reason = rules.check(sig(token=2953217), 10.0)
    assert reason == "instrument token 2953217 does not match RELIANCE (738561)"


def test_quantity_limit_is_inclusive(rules: SignalRules) -> None:
    assert rules.check(sig(quantity=1_000), 1.0) is None
    assert rules.check(sig(quantity=1_001), 1.0) == "quantity 1001 above max 1000"


def test_notional_uses_the_signal_price_first(rules: SignalRules) -> None:
    assert rules.check(sig(quantity=100, price=1_000.0), reference_price=5_000.0) is None
    reason = rules.check(sig(quantity=100, price=1_000.01), reference_price=1.0)
    assert reason == "notional 100001.00 above max 100000.00"


def test_notional_falls_back_to_the_reference_price(rules: SignalRules) -> None:
    assert rules.check(sig(quantity=40), reference_price=2_500.0) is None
    assert rules.check(sig(quantity=41), reference_price=2_500.0) == (
        "notional 102500.00 above max 100000.00"
    )


def test_a_zero_reference_price_is_a_price(rules: SignalRules) -> None:
    assert rules.check(sig(quantity=10), reference_price=0.0) is None


def test_without_any_price_the_notional_cannot_be_checked_and_the_signal_is_refused(
    rules: SignalRules,
) -> None:
    assert rules.check(sig(), None) == "no reference price for RELIANCE to check notional"


def test_rules_from_settings() -> None:
    settings = Settings(trading=TradingSettings(max_quantity=7, max_notional=70.0))
    rules = SignalRules.from_settings(settings)
    assert (rules.max_quantity, rules.max_notional) == (7, 70.0)
    assert rules.instruments == settings.trading.instruments


def test_rules_refuse_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        SignalRules(INSTRUMENTS, max_quantity=0, max_notional=1.0)
    with pytest.raises(ValueError):
        SignalRules(INSTRUMENTS, max_quantity=1, max_notional=float("inf"))


def test_schema_error_summary_names_fields_and_bounds_the_count() -> None:
    with pytest.raises(ValidationError) as info:
        TradingSignal.model_validate({"quantity": -1, "instrument_token": -5, "action": "HOLD"})
    summary = schema_error_summary(info.value)
    assert summary.startswith("invalid signal: ")
    assert "strategy_id: Field required" in summary
    assert summary.endswith("more")


def test_schema_error_summary_of_a_model_level_error() -> None:
    with pytest.raises(ValidationError) as info:
        TradingSignal.model_validate(
            {
                "strategy_id": "s",
                "instrument_token": 1,
                "symbol": "X",
                "action": "BUY",
                "quantity": 1,
                "order_type": "LIMIT",
            }
        )
    assert (
        schema_error_summary(info.value) == "invalid signal: signal: a LIMIT signal needs a price"
    )


# ---------------------------------------------------------------------- id registry


def test_registry_gives_each_id_one_verdict() -> None:
    seen = SignalIdRegistry(max_ids=10)
    assert seen.reserve("a", "evt-1") is Claim.NEW
    assert seen.reserve("a", "evt-1") is Claim.REDELIVERY
    assert seen.reserve("a", "evt-2") is Claim.DUPLICATE
    assert seen.reserve("a") is Claim.DUPLICATE
    seen.release("a")
    assert seen.reserve("a", "evt-2") is Claim.NEW


def test_registry_without_event_ids_treats_every_repeat_as_a_duplicate() -> None:
    seen = SignalIdRegistry()
    assert seen.reserve("a") is Claim.NEW
    assert seen.reserve("a") is Claim.DUPLICATE


def test_registry_is_bounded_and_forgets_the_least_recently_seen() -> None:
    seen = SignalIdRegistry(max_ids=3)
    for name in "abc":
        seen.reserve(name)
    assert seen.reserve("a") is Claim.DUPLICATE
    seen.reserve("d")
    assert len(seen) == 3
    assert "b" not in seen
    assert "a" in seen and "c" in seen and "d" in seen


# ---------------------------------------------------------------------- handler


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, dict[str, Any], str]] = []
        self.fail_next = 0

    async def send(
        self, topic: str, key: Any, data: Any, event_type: str | Enum | None = None, *_: Any
    ) -> str:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("down")
        payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
        kind = event_type.value if isinstance(event_type, Enum) else str(event_type)
        self.sent.append((topic, key, payload, kind))
        return generate_uuid7()


@pytest.fixture
def validator() -> tuple[SignalValidatorService, FakePublisher]:
    settings = Settings(
        broker_namespace="paper",
        trading=TradingSettings(instruments=INSTRUMENTS, max_quantity=100, max_notional=1e6),
    )
    service = SignalValidatorService(settings.redpanda, settings)
    publisher = FakePublisher()
    service.publisher = publisher  # type: ignore[assignment]
    return service, publisher


def raw(data: Any) -> dict[str, Any]:
    return {
        "id": generate_uuid7(),
        "type": EventType.RAW_SIGNAL.value,
        "source": "strategy_runner",
        "data": data,
    }


async def test_handler_validates_and_rejects(
    validator: tuple[SignalValidatorService, FakePublisher],
) -> None:
    service, pub = validator
    tick = MarketTick(instrument_token=738561, symbol="RELIANCE", last_price=2_900.0)
    await service._handle_market_tick(
        {
            "id": generate_uuid7(),
            "type": EventType.MARKET_TICK.value,
            "source": "market_data",
            "data": tick.model_dump(mode="json"),
        }
    )
    good = sig(quantity=10)
    await service._handle_raw_signal(raw(good.model_dump(mode="json")))
    await service._handle_raw_signal(raw(sig(quantity=101).model_dump(mode="json")))

    (t1, k1, d1, e1), (t2, k2, d2, e2) = pub.sent
    assert (t1, k1, e1) == ("paper.signals.validated", "momentum", "signal.validated")
    assert d1["original_signal"]["signal_id"] == good.signal_id
    assert (t2, k2, e2) == ("paper.signals.rejected", "momentum", "signal.rejected")
    assert d2["stage"] == "validator" and d2["reason"] == "quantity 101 above max 100"
    assert (service.stats.validated, service.stats.rejected) == (1, 1)


async def test_handler_rejects_a_malformed_signal_instead_of_raising(
    validator: tuple[SignalValidatorService, FakePublisher],
) -> None:
    service, pub = validator
    await service._handle_raw_signal(raw({"signal_id": "s-1", "strategy_id": "x", "quantity": 0}))
    await service._handle_raw_signal(raw("not a mapping"))

    (t1, k1, d1, _), (_, k2, d2, _) = pub.sent
    assert t1 == "paper.signals.rejected" and k1 == "x"
    assert d1["signal_id"] == "s-1" and d1["reason"].startswith("invalid signal: ")
    assert d1["original_signal"]["quantity"] == 0
    assert k2 is None and d2["signal_id"] is None and d2["original_signal"] == {}
    assert service.stats.schema_errors == 2


async def test_handler_refuses_a_repeated_signal_id(
    validator: tuple[SignalValidatorService, FakePublisher],
) -> None:
    service, pub = validator
    first = sig(price=10.0)
    await service._handle_raw_signal(raw(first.model_dump(mode="json")))
    await service._handle_raw_signal(raw(first.model_dump(mode="json")))

    assert [e for *_, e in pub.sent] == ["signal.validated", "signal.rejected"]
    assert pub.sent[1][2]["reason"] == DUPLICATE_SIGNAL_ID
    assert service.stats.duplicate_signal_ids == 1


async def test_handler_gives_a_redelivered_event_no_second_verdict(
    validator: tuple[SignalValidatorService, FakePublisher],
) -> None:
    service, pub = validator
    message = raw(sig(price=10.0).model_dump(mode="json"))
    await service._handle_raw_signal(message)
    await service._handle_raw_signal(message)

    assert [e for *_, e in pub.sent] == ["signal.validated"]
    assert service.stats.redeliveries == 1


async def test_a_failed_publish_does_not_make_the_retry_a_duplicate(
    validator: tuple[SignalValidatorService, FakePublisher],
) -> None:
    service, pub = validator
    message = raw(sig(price=10.0).model_dump(mode="json"))
    pub.fail_next = 1
    with pytest.raises(ConnectionError):
        await service._handle_raw_signal(message)
    await service._handle_raw_signal(message)
    assert [e for *_, e in pub.sent] == ["signal.validated"]


async def test_handler_dead_letters_other_event_types_and_non_envelopes(
    validator: tuple[SignalValidatorService, FakePublisher],
) -> None:
    service, pub = validator
    wrong = {"id": "e-1", "type": "market.tick", "source": "x", "data": {}}
    with pytest.raises(PermanentError, match=r"unexpected event type 'market.tick'"):
        await service._handle_raw_signal(wrong)
    with pytest.raises(PermanentError, match=r"not an event envelope on paper.signals.raw"):
        await service._handle_raw_signal({"signal_id": "s-1", "quantity": 5})
    with pytest.raises(PermanentError, match=r"not an event envelope on market.ticks"):
        await service._handle_market_tick({"last_price": 1.0})
    assert pub.sent == []
