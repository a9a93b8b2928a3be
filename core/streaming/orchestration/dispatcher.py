"""Hands fetched messages to lanes: ordering, concurrency, runs and in-flight bounds.

A lane is a queue with one worker task, so messages of one lane run in order.
The worker takes what is queued as one *run* (up to ``max_run`` messages) and
processes it with one call. The ordering mode decides which lane a message takes:

- ``partition``: one lane per partition (a partition's messages in order);
- ``key``: ``concurrency`` lanes; a key is bound to one lane while any of its
  messages is in flight (so equal keys keep their order) and new keys go to the
  least busy lane (so different keys run in parallel, spread by load);
- ``unordered``: ``concurrency`` lanes fed round-robin.

After a run, its messages without an outcome (a run cut short) go back to the
front of their lane unless :meth:`Dispatcher.keeps` says otherwise; the rest
are handed to ``on_run_done``. The dispatcher counts messages and bytes in
lanes; the flow pauses fetching when a bound is reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable

from core.config.settings import OrderingMode
from core.streaming.infrastructure.closing import raise_if_cancelled
from core.streaming.infrastructure.consumed_message import ConsumedMessage
from core.streaming.types import TopicPartition

logger = logging.getLogger(__name__)

__all__ = ["Dispatcher", "LaneCrashedError", "OrderingMode"]
Process = Callable[[list[ConsumedMessage]], Awaitable[None]]
RunDone = Callable[[list[ConsumedMessage]], Awaitable[None]]


class LaneCrashedError(RuntimeError):
    """A lane worker failed outside the reliability path; the flow must be reset."""


class _Lane:
    """One ordered queue and its worker."""

    def __init__(self, name: Hashable, dispatcher: Dispatcher) -> None:
        self.name = name
        self.queue: deque[ConsumedMessage] = deque()
        self.run: list[ConsumedMessage] = []
        self.abandoning = False
        self._wakeup = asyncio.Event()
        self._dispatcher = dispatcher
        self.task = asyncio.create_task(self._work(), name=f"lane-{name}")

    def push(self, message: ConsumedMessage) -> None:
        self.queue.append(message)
        self._wakeup.set()

    async def _work(self) -> None:
        dispatcher = self._dispatcher
        queue = self.queue
        task = asyncio.current_task()
        assert task is not None
        while True:
            self._check_cancelled(task)
            while not queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if len(queue) <= dispatcher.max_run:
                run = list(queue)
                queue.clear()
            else:
                run = [queue.popleft() for _ in range(dispatcher.max_run)]
            self.run = run
            try:
                await dispatcher.process(run)
            except asyncio.CancelledError:
                if not self.abandoning:
                    raise
            except BaseException as exc:
                dispatcher.crash(exc, self)
                raise
            finally:
                self.run = []
            await dispatcher.finish_run(self, run)

    def _check_cancelled(self, task: asyncio.Task[None]) -> None:
        """End on a cancellation a library swallowed; carry on after an abandon."""
        if self.abandoning:
            self.abandoning = False
            while task.cancelling():
                task.uncancel()
            return
        raise_if_cancelled()


class Dispatcher:
    """Routes messages to ordered lanes, runs them, and tracks what is in flight."""

    def __init__(
        self,
        process: Process,
        *,
        ordering: OrderingMode = "partition",
        concurrency: int = 1,
        max_run: int = 500,
        on_run_done: RunDone | None = None,
        keeps: Callable[[ConsumedMessage], bool] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_run < 1:
            raise ValueError("max_run must be at least 1")
        self.process = process
        self.ordering = ordering
        self.concurrency = concurrency
        self.max_run = max_run
        self.on_run_done = on_run_done
        self.keeps = keeps or (lambda message: True)
        self._lanes: dict[Hashable, _Lane] = {}
        self._round_robin = itertools.cycle(range(concurrency))
        # Key ordering: key -> [lane, messages in flight]; keys bound per lane.
        self._bindings: dict[Hashable, list[int]] = {}
        self._lane_loads = [0] * concurrency
        self.in_flight = 0
        self.in_flight_bytes = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._progress = asyncio.Event()
        self.crashed: BaseException | None = None
        self.orphaned: list[ConsumedMessage] = []

    def _lane_key(self, message: ConsumedMessage) -> Hashable:
        if self.ordering == "partition":
            record = message.record
            return record.partition, record.topic
        if self.ordering == "key":
            if self.concurrency == 1:
                return 0
            return self._bind(message)
        return next(self._round_robin)

    def _bind(self, message: ConsumedMessage) -> int:
        """The lane of a message's key: the one holding that key, else the least busy.

        A key stays on one lane while any of its messages is in flight, so its
        order holds; once none is, the key may move. Keys spread over lanes by
        load rather than by hash, so ``concurrency`` lanes stay busy even when a
        few keys would hash to the same one.
        """
        key = (message.record.partition, message.record.topic, message.record.key)
        bound = self._bindings.get(key)
        if bound is not None:
            bound[1] += 1
            return int(bound[0])
        loads = self._lane_loads
        lane = min(range(self.concurrency), key=loads.__getitem__)
        loads[lane] += 1
        self._bindings[key] = [lane, 1]
        return lane

    def _unbind(self, messages: list[ConsumedMessage]) -> None:
        bindings, loads = self._bindings, self._lane_loads
        for message in messages:
            key = (message.record.partition, message.record.topic, message.record.key)
            bound = bindings.get(key)
            if bound is None:
                continue
            bound[1] -= 1
            if bound[1] <= 0:
                del bindings[key]
                loads[bound[0]] -= 1

    def submit_many(self, messages: Iterable[ConsumedMessage]) -> None:
        """Queue each message on its lane (consecutive messages of one lane in one go)."""
        lane_key = self._lane_key
        n = size = 0
        pending: list[ConsumedMessage] = []
        current: Hashable = None
        for message in messages:
            key = lane_key(message)
            if key != current and pending:
                self._push(current, pending)
                pending = []
            current = key
            pending.append(message)
            n += 1
            size += message.nbytes
        if pending:
            self._push(current, pending)
        if n:
            self.in_flight += n
            self.in_flight_bytes += size
            self._idle.clear()

    def _push(self, key: Hashable, messages: list[ConsumedMessage]) -> None:
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(key, self)
        lane.queue.extend(messages)
        lane._wakeup.set()

    def submit_partition(self, tp: TopicPartition, messages: list[ConsumedMessage]) -> None:
        """Queue one partition's fetched messages, in order."""
        if self.ordering != "partition":
            self.submit_many(messages)
            return
        self._push((tp.partition, tp.topic), messages)
        self.in_flight += len(messages)
        self.in_flight_bytes += sum([m.nbytes for m in messages])
        self._idle.clear()

    def submit(self, message: ConsumedMessage) -> None:
        """Queue one message on its lane."""
        self.submit_many((message,))

    async def finish_run(self, lane: _Lane, run: list[ConsumedMessage]) -> None:
        """Requeue what a cut-short run did not run; hand the rest on."""
        keeps = self.keeps
        requeue = [m for m in run if m.outcome is None and keeps(m)]
        if requeue:
            lane.queue.extendleft(reversed(requeue))
            leaving = [m for m in run if not (m.outcome is None and keeps(m))]
        else:
            leaving = run
        try:
            if self.on_run_done is not None and leaving:
                await self.on_run_done(leaving)
        finally:
            self._left(leaving)

    def _left(self, messages: list[ConsumedMessage]) -> None:
        if self._bindings:
            self._unbind(messages)
        self.in_flight -= len(messages)
        self.in_flight_bytes -= sum([m.nbytes for m in messages])
        self._progress.set()
        if self.in_flight <= 0:
            self._idle.set()

    def crash(self, exc: BaseException, lane: _Lane) -> None:
        """Remember a lane failure; its run and queue will not run here."""
        where = lane.run[0].location() if lane.run else str(lane.name)
        logger.error("lane crashed on %s", where, exc_info=exc)
        if self.crashed is None:
            self.crashed = exc
        orphans = [*lane.run, *lane.queue]
        lane.queue.clear()
        self.orphaned.extend(orphans)
        self._left(orphans)

    def take_orphaned(self) -> list[ConsumedMessage]:
        """Messages of lanes that died (their claims need releasing)."""
        orphaned, self.orphaned = self.orphaned, []
        return orphaned

    async def wait_progress(self, timeout_s: float) -> None:
        """Wait until some message left a lane (or ``timeout_s``)."""
        self._progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._progress.wait(), timeout_s)

    def drop_queued(self, partitions: set[TopicPartition] | None = None) -> list[ConsumedMessage]:
        """Forget queued, not yet started messages (of ``partitions``); returns them."""
        dropped: list[ConsumedMessage] = []
        for lane in self._lanes.values():
            if partitions is None:
                dropped.extend(lane.queue)
                lane.queue.clear()
                continue
            keep: list[ConsumedMessage] = []
            for message in lane.queue:
                (dropped if message.topic_partition in partitions else keep).append(message)
            lane.queue.clear()  # in place: the worker holds this deque
            lane.queue.extend(keep)
        if dropped:
            self._left(dropped)
        return dropped

    def busy_with(self, partitions: set[TopicPartition]) -> bool:
        """True while any lane runs or holds a message of ``partitions``."""
        for lane in self._lanes.values():
            if any(m.topic_partition in partitions for m in lane.run):
                return True
            if any(m.topic_partition in partitions for m in lane.queue):
                return True
        return False

    def abandon(self, partitions: set[TopicPartition]) -> int:
        """Cancel the handlers now running messages of ``partitions``; how many lanes."""
        count = 0
        for lane in self._lanes.values():
            if any(m.topic_partition in partitions for m in lane.run) and not lane.task.done():
                lane.abandoning = True
                lane.task.cancel()
                count += 1
        return count

    async def wait_partitions(self, partitions: set[TopicPartition], timeout_s: float) -> bool:
        """Wait until no lane holds work of ``partitions``; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.busy_with(partitions):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await self.wait_progress(min(remaining, 0.05))
        return True

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self) -> list[ConsumedMessage]:
        """Cancel every lane worker; returns the messages they still held."""
        lanes, self._lanes = list(self._lanes.values()), {}
        left: list[ConsumedMessage] = []
        for lane in lanes:
            left.extend(lane.run)
            left.extend(lane.queue)
            lane.task.cancel()
        await asyncio.gather(*(lane.task for lane in lanes), return_exceptions=True)
        self.in_flight = 0
        self.in_flight_bytes = 0
        self._bindings.clear()
        self._lane_loads = [0] * self.concurrency
        self._idle.set()
        return left
