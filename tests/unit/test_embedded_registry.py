"""The process-wide registry of embedded brokers, and the makers that use it."""

from __future__ import annotations

from uuid import uuid4

import pytest

from core.config.settings import RedpandaSettings
from core.streaming.clients import (
    ConsumerOptions,
    create_admin,
    create_consumer,
    create_producer,
)
from core.streaming.embedded import (
    InMemoryAdmin,
    InMemoryBroker,
    InMemoryConsumer,
    InMemoryProducer,
    broker_name,
    drop_broker,
    get_broker,
    reset_broker,
)


def test_same_url_same_broker_and_default_alias() -> None:
    assert get_broker("memory://") is get_broker("memory://default")
    assert get_broker("memory://default/") is get_broker("memory://")
    url = f"memory://test-{uuid4().hex}"
    try:
        assert get_broker(url) is get_broker(url)
        assert get_broker(url) is not get_broker("memory://")
    finally:
        drop_broker(url)


def test_reset_and_drop() -> None:
    url = f"memory://test-{uuid4().hex}"
    first = get_broker(url)
    first.create_topic("t")
    fresh = reset_broker(url, default_partitions=1, retention_records=10)
    assert fresh is not first and get_broker(url) is fresh
    assert fresh.topics() == {} and fresh.default_partitions == 1
    drop_broker(url)
    assert get_broker(url) is not fresh
    drop_broker(url)
    drop_broker(url)


def test_non_memory_url_is_refused() -> None:
    with pytest.raises(ValueError):
        broker_name("kafka://x")
    assert broker_name("memory://abc") == "abc"


def test_broker_options_are_validated() -> None:
    for options in (
        {"default_partitions": 0},
        {"retention_records": 0},
        {"max_message_bytes": 0},
    ):
        with pytest.raises(ValueError):
            InMemoryBroker(**options)  # type: ignore[arg-type]


def test_makers_build_embedded_clients_on_the_urls_broker() -> None:
    url = f"memory://test-{uuid4().hex}"
    try:
        settings = RedpandaSettings(bootstrap_servers=url)
        consumer = create_consumer(settings, ["t"], "g", ConsumerOptions(max_poll_records=7))
        assert isinstance(consumer, InMemoryConsumer)
        assert consumer._broker is get_broker(url)
        assert consumer._max_poll_records == 7
        producer = create_producer(settings, max_request_size=100)
        assert isinstance(producer, InMemoryProducer)
        assert producer._max_request_size == 100
        assert isinstance(create_admin(settings), InMemoryAdmin)
    finally:
        drop_broker(url)


async def test_settings_choose_the_embedded_brokers_partitions_and_retention() -> None:
    from uuid import uuid4

    from core.config.settings import RedpandaSettings
    from core.streaming.embedded import drop_broker, get_broker
    from core.streaming.infrastructure.message_producer import MessageProducer

    url = f"memory://retention-{uuid4().hex[:8]}"
    config = RedpandaSettings(
        bootstrap_servers=url, topic_partitions=1, embedded_retention_records=5
    )
    producer = MessageProducer(config, "t")
    try:
        await producer.send_many("kept", [(None, {"n": n}) for n in range(20)])
        broker = get_broker(url)
        assert broker.partition_count("kept") == 1
        assert len(broker.records("kept")) == 5
    finally:
        await producer.stop()
        drop_broker(url)
