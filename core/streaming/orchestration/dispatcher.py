"""Hands fetched messages to lanes: ordering, concurrency and in-flight bounds.

A lane is a queue with one worker task, so messages of one lane run in order.
The ordering mode decides which lane a message takes:

- ``partition``: one lane per partition (a partition's messages in order);
- ``key``: ``concurrency`` lanes chosen by a hash of partition and key, so equal
  keys keep their order and different keys run in parallel;
- ``unordered``: ``concurrency`` lanes fed round-robin.

The dispatcher counts messages and bytes in flight; the flow pauses fetching
when a bound is reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Literal

from core.streaming.infrastructure.consumed_message import ConsumedMessage
from core.streaming.reliability.deduplication_manager import ClaimResult
from core.streaming.types import TopicPartition

logger = logging.getLogger(__name__)

OrderingMode = Literal["partition", "key", "unordered"]
Process = Callable[[ConsumedMessage, ClaimResult | None], Awaitable[object]]


class LaneCrashedError(RuntimeError):
    """A lane worker failed outside the reliability path; the flow must be reset."""


class _Lane:
    """One ordered queue and its worker."""

    def __init__(self, name: Hashable, dispatcher: Dispatcher) -> None:
        self.name = name
        self.queue: deque[tuple[ConsumedMessage, ClaimResult | None]] = deque()
        self.current: ConsumedMessage | None = None
        self._wakeup = asyncio.Event()
        self._dispatcher = dispatcher
        self.task = asyncio.create_task(self._work(), name=f"lane-{name}")

    def push(self, message: ConsumedMessage, claim: ClaimResult | None) -> None:
        self.queue.append((message, claim))
        self._wakeup.set()

    async def _work(self) -> None:
        dispatcher = self._dispatcher
        while True:
            while not self.queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            message, claim = self.queue.popleft()
            self.current = message
            try:
                await dispatcher.process(message, claim)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                dispatcher.crash(exc, message)
                # Its claim (if still ours) is released with the rest of the lane's.
                dispatcher.orphaned.append((message, claim))
                dispatcher.orphan(self)
                raise
            finally:
                self.current = None
                dispatcher.done(message)


class Dispatcher:
    """Routes messages to ordered lanes and tracks what is in flight."""

    def __init__(
        self,
        process: Process,
        *,
        ordering: OrderingMode = "partition",
        concurrency: int = 1,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.process = process
        self.ordering = ordering
        self.concurrency = concurrency
        self._lanes: dict[Hashable, _Lane] = {}
        self._round_robin = itertools.cycle(range(concurrency))
        self.in_flight = 0
        self.in_flight_bytes = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._progress = asyncio.Event()
        self.crashed: BaseException | None = None
        self.orphaned: list[tuple[ConsumedMessage, ClaimResult | None]] = []

    def _lane_key(self, message: ConsumedMessage) -> Hashable:
        if self.ordering == "partition":
            record = message.record
            return (record.topic, record.partition)
        if self.ordering == "key":
            if self.concurrency == 1:
                return 0
            return hash((message.topic, message.partition, message.key)) % self.concurrency
        return next(self._round_robin)

    def submit(self, message: ConsumedMessage, claim: ClaimResult | None) -> None:
        """Queue ``message`` on its lane."""
        key = self._lane_key(message)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(key, self)
        self.in_flight += 1
        self.in_flight_bytes += message.size
        self._idle.clear()
        lane.push(message, claim)

    def done(self, message: ConsumedMessage) -> None:
        """A lane finished with ``message`` (final or not)."""
        self.in_flight -= 1
        self.in_flight_bytes -= message.size
        self._progress.set()
        if self.in_flight == 0:
            self._idle.set()

    def crash(self, exc: BaseException, message: ConsumedMessage) -> None:
        """Remember a lane failure; the flow sees it and resets."""
        logger.error("lane crashed on %s", message.location(), exc_info=exc)
        if self.crashed is None:
            self.crashed = exc
        self._progress.set()

    def orphan(self, lane: _Lane) -> None:
        """Take the queue of a lane that died: its messages will not run here."""
        for item in lane.queue:
            self.in_flight -= 1
            self.in_flight_bytes -= item[0].size
        self.orphaned.extend(lane.queue)
        lane.queue.clear()

    def take_orphaned(self) -> list[tuple[ConsumedMessage, ClaimResult | None]]:
        """Messages left queued on lanes that died (their claims need releasing)."""
        orphaned, self.orphaned = self.orphaned, []
        return orphaned

    async def wait_progress(self, timeout_s: float) -> None:
        """Wait until some message left a lane (or ``timeout_s``)."""
        self._progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._progress.wait(), timeout_s)

    def drop_queued(
        self, partitions: set[TopicPartition] | None = None
    ) -> list[tuple[ConsumedMessage, ClaimResult | None]]:
        """Forget queued, not yet started messages (of ``partitions``); returns them."""
        dropped: list[tuple[ConsumedMessage, ClaimResult | None]] = []
        for lane in self._lanes.values():
            keep: deque[tuple[ConsumedMessage, ClaimResult | None]] = deque()
            for item in lane.queue:
                if partitions is None or item[0].topic_partition in partitions:
                    dropped.append(item)
                    self.in_flight -= 1
                    self.in_flight_bytes -= item[0].size
                else:
                    keep.append(item)
            lane.queue = keep
        if self.in_flight == 0:
            self._idle.set()
        return dropped

    def busy_with(self, partitions: set[TopicPartition]) -> bool:
        """True while any lane holds a message of ``partitions``."""
        for lane in self._lanes.values():
            if lane.current is not None and lane.current.topic_partition in partitions:
                return True
            if any(m.topic_partition in partitions for m, _ in lane.queue):
                return True
        return False

    async def wait_partitions(self, partitions: set[TopicPartition], timeout_s: float) -> bool:
        """Wait until no lane holds work of ``partitions``; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.busy_with(partitions):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await self.wait_progress(min(remaining, 0.1))
        return True

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Cancel every lane worker (what is queued is forgotten)."""
        lanes, self._lanes = list(self._lanes.values()), {}
        for lane in lanes:
            lane.task.cancel()
        await asyncio.gather(*(lane.task for lane in lanes), return_exceptions=True)
        self.in_flight = 0
        self.in_flight_bytes = 0
        self._idle.set()
