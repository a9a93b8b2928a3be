"""Hands fetched messages to lanes: ordering, concurrency, runs and in-flight bounds.

A lane is a queue with one worker task, so messages of one lane run in order.
The worker takes what is queued as one *run* (up to ``max_run`` messages) and
processes it with one call. The ordering mode decides which lane a message takes:

- ``partition``: one lane per partition (a partition's messages in order);
- ``key``: ``concurrency`` lanes over one :class:`KeyQueue`; a free lane takes
  keys no other lane is running (most waiting first), so equal keys keep their
  order, different keys run in parallel, and no lane idles while keys wait;
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
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable

from core.config.settings import OrderingMode
from core.streaming.infrastructure.closing import raise_if_cancelled
from core.streaming.infrastructure.consumed_message import ConsumedMessage
from core.streaming.orchestration.key_queue import KeyQueue
from core.streaming.orchestration.run_queue import RunQueue
from core.streaming.types import TopicPartition

logger = logging.getLogger(__name__)

__all__ = ["Dispatcher", "LaneCrashedError", "OrderingMode"]
Process = Callable[[list[ConsumedMessage]], Awaitable[None]]
#: Key ordering over several lanes: about how long (seconds) one run may take.
RUN_TARGET_S = 0.001
RunDone = Callable[[list[ConsumedMessage]], Awaitable[None]]


class LaneCrashedError(RuntimeError):
    """A lane worker failed outside the reliability path; the flow must be reset."""


class _Lane:
    """One ordered queue and its worker."""

    def __init__(self, name: Hashable, dispatcher: Dispatcher) -> None:
        self.name = name
        self.queue = RunQueue()
        self.run: list[ConsumedMessage] = []
        #: Key ordering: the keys of the run (running on this lane until it ends),
        #: and whether the lane waits for keys to run.
        self.keys: list[Hashable] = []
        self.free = False
        self.abandoning = False
        self._wakeup = asyncio.Event()
        self._dispatcher = dispatcher
        self.task = asyncio.create_task(self._work(), name=f"lane-{name}")

    def push(self, message: ConsumedMessage) -> None:
        self.queue.extend([message])
        self._wakeup.set()

    async def _work(self) -> None:
        dispatcher = self._dispatcher
        queue = self.queue
        task = asyncio.current_task()
        assert task is not None
        while True:
            self._check_cancelled(task)
            if dispatcher.keyed is not None:
                run = dispatcher.take_keyed(self)
                while not run:
                    self._wakeup.clear()
                    self.free = True
                    try:
                        await self._wakeup.wait()
                    finally:
                        self.free = False
                    run = dispatcher.take_keyed(self)
            else:
                while not queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                run = queue.take(dispatcher.max_run)
            self.run = run
            started = time.monotonic()
            try:
                await dispatcher.process(run)
                dispatcher.timed(len(run), time.monotonic() - started)
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
        #: Key ordering over several lanes: the messages waiting per key.
        self.keyed = KeyQueue() if ordering == "key" and concurrency > 1 else None
        #: Moving average of the time a run takes per message (seconds; None: no run yet).
        self.seconds_per_message: float | None = None
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
            return 0  # one lane (several lanes go through ``keyed``)
        return next(self._round_robin)

    def timed(self, count: int, seconds: float) -> None:
        """A run of ``count`` messages took ``seconds``: keep a moving average per message."""
        sample = seconds / count
        average = self.seconds_per_message
        self.seconds_per_message = sample if average is None else average + (sample - average) * 0.2

    def take_keyed(self, lane: _Lane) -> list[ConsumedMessage]:
        """Key ordering: the next run for a free lane.

        A run holds its keys until it ends, so it is kept to its fair share of
        what waits and to about ``RUN_TARGET_S`` of handler time: fast handlers
        get long runs (little overhead per message), slow ones short runs (keys
        pass to whichever lane is free next).
        """
        keyed = self.keyed
        assert keyed is not None
        if not keyed.ready:
            return []
        average = self.seconds_per_message
        if average is None:
            limit = 1  # until a run has shown how long the handler takes
        else:
            limit = min(self.max_run, -(-keyed.size // self.concurrency))
            if average > 0:
                limit = min(limit, int(RUN_TARGET_S / average))
        run, lane.keys = keyed.take(max(1, limit))
        return run

    def _wake_free_lanes(self, keys: int) -> None:
        """Wake up to ``keys`` lanes that are waiting for work."""
        for lane in self._lanes.values():
            if keys <= 0:
                return
            if lane.free and not lane._wakeup.is_set():
                lane._wakeup.set()
                keys -= 1

    def submit_many(self, messages: Iterable[ConsumedMessage]) -> None:
        """Queue each message on its lane (consecutive messages of one lane in one go)."""
        if self.keyed is not None:
            self._submit_keyed(list(messages))
            return
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

    def _submit_keyed(self, messages: list[ConsumedMessage]) -> None:
        assert self.keyed is not None
        if not messages:
            return
        if not self._lanes:
            for n in range(self.concurrency):
                self._lanes[n] = _Lane(n, self)
        self.in_flight += len(messages)
        self.in_flight_bytes += sum([m.nbytes for m in messages])
        self._idle.clear()
        self._wake_free_lanes(self.keyed.push(messages))

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
            if self.keyed is None:
                lane.queue.extendleft(requeue)
            leaving = [m for m in run if not (m.outcome is None and keeps(m))]
        else:
            leaving = run
        try:
            if self.on_run_done is not None and leaving:
                await self.on_run_done(leaving)
        finally:
            self._left(leaving)
            if self.keyed is not None:
                keys, lane.keys = lane.keys, []
                self._wake_free_lanes(self.keyed.release(keys, requeue))

    def _left(self, messages: list[ConsumedMessage]) -> None:
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
        orphans = [*lane.run, *lane.queue.clear()]
        if self.keyed is not None:
            # The lane's keys stay with it: their waiting messages cannot run here.
            keys = set(lane.keys)
            orphans += self.keyed.drop(lambda m: self.keyed.key_of(m) in keys)  # type: ignore[union-attr]
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
        if self.keyed is not None:
            dropped += self.keyed.drop(
                lambda m: partitions is None or m.topic_partition in partitions
            )
        for lane in self._lanes.values():
            if partitions is None:
                dropped.extend(lane.queue.clear())
                continue
            keep: list[ConsumedMessage] = []
            for message in lane.queue.clear():  # in place: the worker holds this queue
                (dropped if message.topic_partition in partitions else keep).append(message)
            lane.queue.extend(keep)
        if dropped:
            self._left(dropped)
        return dropped

    def busy_with(self, partitions: set[TopicPartition]) -> bool:
        """True while any lane runs or holds a message of ``partitions``."""
        if self.keyed is not None and any(
            m.topic_partition in partitions for m in self.keyed.messages()
        ):
            return True
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
            left.extend(lane.queue.clear())
            lane.task.cancel()
        if self.keyed is not None:
            left.extend(self.keyed.clear())
        await asyncio.gather(*(lane.task for lane in lanes), return_exceptions=True)
        self.in_flight = 0
        self.in_flight_bytes = 0
        self._idle.set()
        return left
