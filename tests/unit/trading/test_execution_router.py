"""ExecutionRouter: strategy -> namespaces, defaults, validation."""

from __future__ import annotations

import pytest

from core.config.settings import Settings, TradingSettings
from core.streaming.topic_names import InvalidTopicNameError
from services.trading_engine.execution_router import ExecutionRouter


async def test_routes_a_strategy_to_several_namespaces_in_order() -> None:
    router = ExecutionRouter({"momentum": ["paper", "live", "shadow"]}, ["paper"])
    assert await router.get_target_namespaces("momentum") == ["paper", "live", "shadow"]


async def test_duplicates_are_dropped_keeping_first_occurrence() -> None:
    router = ExecutionRouter({"mr": ["live", "paper", "live", "paper"]}, ["paper", "paper"])
    assert await router.get_target_namespaces("mr") == ["live", "paper"]
    assert await router.get_target_namespaces("other") == ["paper"]


async def test_unknown_strategy_gets_the_defaults() -> None:
    router = ExecutionRouter({"momentum": ["live"]}, ["paper", "sim"])
    assert await router.get_target_namespaces("unknown") == ["paper", "sim"]
    assert router.default_namespaces == ["paper", "sim"]


async def test_returned_list_is_a_copy() -> None:
    router = ExecutionRouter({"momentum": ["live"]}, ["paper"])
    got = await router.get_target_namespaces("momentum")
    got.append("hacked")
    (await router.get_target_namespaces("x")).clear()
    assert await router.get_target_namespaces("momentum") == ["live"]
    assert await router.get_target_namespaces("x") == ["paper"]


def test_routes_are_copied_at_construction() -> None:
    routes = {"momentum": ["live"]}
    router = ExecutionRouter(routes, ["paper"])
    routes["momentum"].append("bad name!")
    routes["new"] = ["live"]
    assert router.all_namespaces() == ["paper", "live"]


def test_all_namespaces_lists_defaults_first_without_duplicates() -> None:
    router = ExecutionRouter({"a": ["live", "paper"], "b": ["sim", "live"]}, ["paper"])
    assert router.all_namespaces() == ["paper", "live", "sim"]


@pytest.mark.parametrize("bad", ["", "has space", "a/b", "..", "x" * 250])
def test_invalid_namespaces_are_refused(bad: str) -> None:
    with pytest.raises(InvalidTopicNameError):
        ExecutionRouter({"s": [bad]}, ["paper"])
    with pytest.raises(InvalidTopicNameError):
        ExecutionRouter({}, [bad])


def test_empty_route_and_empty_defaults_are_refused() -> None:
    with pytest.raises(ValueError, match="route of 'momentum' is empty"):
        ExecutionRouter({"momentum": []}, ["paper"])
    with pytest.raises(ValueError, match="default namespaces is empty"):
        ExecutionRouter({}, [])
    with pytest.raises(ValueError, match="empty strategy id"):
        ExecutionRouter({"": ["paper"]}, ["paper"])


def test_a_bare_string_is_not_taken_as_a_list_of_letters() -> None:
    with pytest.raises(TypeError):
        ExecutionRouter({"s": "live"}, ["paper"])
    with pytest.raises(TypeError):
        ExecutionRouter({}, "paper")


async def test_from_settings() -> None:
    settings = Settings(
        broker_namespace="live",
        trading=TradingSettings(strategy_routes={"momentum": ["paper", "live"]}),
    )
    router = ExecutionRouter.from_settings(settings)
    assert await router.get_target_namespaces("momentum") == ["paper", "live"]
    assert await router.get_target_namespaces("carry") == ["live"]


def test_from_settings_refuses_an_invalid_broker_namespace() -> None:
    with pytest.raises(InvalidTopicNameError):
        ExecutionRouter.from_settings(Settings(broker_namespace="not valid"))
