"""Read back the recent past of a service's topics at start (its own outputs, the ticks).

Services keep only bounded state in memory; what must survive a restart is
rebuilt from the topics that already record it, instead of a second store that
could disagree with them. Records come back decoded, per topic, each
partition's in offset order (so an instrument's ticks stay in order).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import orjson

from core.config.settings import RedpandaSettings, Settings
from core.streaming.errors import BrokerUnavailableError
from core.streaming.infrastructure.connection_manager import ConnectionManager
from core.streaming.topic_reader import scan_topics
from core.streaming.types import FetchedRecord

T = TypeVar("T")


class StateRestoreError(RuntimeError):
    """A service could not read back its state at start; nothing was consumed."""


async def wait_for_broker(settings: Settings) -> None:
    """Return once the broker answers; ``BrokerUnavailableError`` after ``connect_timeout_s``.

    Restoring reads topics before the service's own connections start, so it
    waits for the broker the same way they do and fails with the same message.
    """
    manager = ConnectionManager(settings, use_redis=False)
    await manager.start()
    await manager.stop()


async def restoring(what: str, settings: Settings, step: Callable[[], Awaitable[T]]) -> T:
    """Run ``step`` once the broker answers; its failures become :class:`StateRestoreError`.

    ``BrokerUnavailableError`` passes through as it is (the usual start-up error).
    """
    await wait_for_broker(settings)
    try:
        return await step()
    except BrokerUnavailableError:
        raise
    except Exception as exc:
        raise StateRestoreError(f"{what}: {type(exc).__name__}: {exc}") from exc


async def read_recent(
    config: RedpandaSettings, tails: Mapping[str, int], *, timeout_s: float = 60.0
) -> dict[str, list[dict[str, Any]]]:
    """The last ``tails[topic]`` records of each partition of each topic, as JSON objects.

    Values that are not JSON objects are left out; missing topics read as empty.
    """
    found: dict[str, list[dict[str, Any]]] = {topic: [] for topic in tails}
    wanted = {topic: n for topic, n in tails.items() if n > 0}
    if not wanted:
        return found

    def on_batch(batch: Sequence[FetchedRecord]) -> None:
        for record in batch:
            try:
                value = orjson.loads(record.value or b"")
            except orjson.JSONDecodeError:
                continue
            if isinstance(value, dict):
                found[record.topic].append(value)

    await scan_topics(config, list(wanted), on_batch, tail=wanted, timeout_s=timeout_s)
    return found
