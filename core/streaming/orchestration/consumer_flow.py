"""One consumer flow at run time: fetch loop, lanes, checkpoint, revocation, stop.

The flow joins a :class:`MessageConsumer` to its :class:`ReliabilityLayer` (the
step chain) through a :class:`Dispatcher` (lanes), and commits through its
:class:`Checkpoint`. ``run()`` is the fetch loop the orchestrator supervises: it
fetches, starts the dedup claims of each batch, queues it on the lanes and asks
the checkpoint to commit when the policy is due, without waiting for it.

Stop drops what has not started (its claims given back, left uncommitted),
lets running handlers finish within ``drain_timeout_s``, commits exactly what
finished, then leaves the group; revocation does the same for the revoked
partitions within ``revocation_timeout_s``. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from core.streaming.infrastructure.consumed_message import ConsumedMessage
from core.streaming.infrastructure.message_consumer import MessageConsumer
from core.streaming.orchestration.checkpoint import Checkpoint
from core.streaming.orchestration.dispatcher import Dispatcher, LaneCrashedError, OrderingMode
from core.streaming.reliability.reliability_layer import ReliabilityLayer
from core.streaming.types import TopicPartition

logger = logging.getLogger(__name__)

_POLL_WHILE_PAUSED_S = 5.0


@dataclass(frozen=True)
class FlowOptions:
    """Run-time knobs of one flow."""

    ordering: OrderingMode = "partition"
    concurrency: int = 1
    max_in_flight: int = 1_000
    max_in_flight_bytes: int = 64 * 1024 * 1024
    drain_timeout_s: float = 30.0
    revocation_timeout_s: float = 5.0
    stop_timeout_s: float = 10.0
    lag_refresh_s: float = 1.0
    max_run: int = 500


class ConsumerFlow:
    """A consumer, its step chain, the lanes between them and the checkpoint after."""

    def __init__(
        self,
        consumer: MessageConsumer,
        reliability_layer: ReliabilityLayer,
        options: FlowOptions | None = None,
        *,
        name: str | None = None,
    ) -> None:
        self.consumer = consumer
        self.layer = reliability_layer
        self.options = options or FlowOptions()
        self.name = name or f"{consumer.group_id}:{'+'.join(consumer.topics)}"
        self.sensor = reliability_layer.sensor
        self.metrics = reliability_layer.metrics_collector
        #: Exactly-once: the transactional producers of the input partitions (or None).
        self.transactions = reliability_layer.transactions
        self.checkpoint = Checkpoint(
            consumer,
            policy=consumer.commit_policy,
            dedup=reliability_layer.dedup_step,
            sensor=self.sensor,
            recover=self._recover,
            timeout_s=self.options.stop_timeout_s,
            transactions=self.transactions,
        )
        self._revoking: set[TopicPartition] = set()
        self._recovering: set[asyncio.Task[None]] = set()
        self.dispatcher = self._new_dispatcher()
        self._stopping = False
        self._started = False
        #: The error that keeps the flow from fetching (a broker or store outage), if any.
        self.outage: str | None = None
        self.backpressure_pauses = 0
        self._last_lag_refresh = 0.0
        reliability_layer.set_revoked(self._leaving)
        consumer.set_revocation_hook(self._on_revoke)
        if self.transactions is not None:
            # Fence the previous owners, then fetch again from the (now stable) commit.
            self.transactions.set_consumer(consumer)
            consumer.set_assignment_hook(self.transactions.assign)
            # A fenced partition's runs stop between messages (see _leaving).
            self.transactions.on_fenced = lambda: reliability_layer.halt(True)

    def _new_dispatcher(self) -> Dispatcher:
        per_message = self.consumer.commit_policy.per_message
        return Dispatcher(
            self.layer.process_batch,
            ordering=self.options.ordering,
            concurrency=self.options.concurrency,
            max_run=1 if per_message else self.options.max_run,
            on_run_done=self._run_done,
            keeps=self._keeps,
        )

    def _leaving(self, message: ConsumedMessage) -> bool:
        """Whether a message's partition is being given up (revoked, or fenced)."""
        txns = self.transactions
        if not self._revoking and (txns is None or not txns.fenced_total):
            return False
        tp = message.topic_partition
        return tp in self._revoking or (txns is not None and txns.is_fenced(tp))

    def _keeps(self, message: ConsumedMessage) -> bool:
        """Whether a message left unrun goes back to its lane."""
        tp = message.topic_partition
        if self._stopping or tp in self._revoking:
            return False
        # Exactly-once: a partition being taken over is fetched again from its commit.
        txns = self.transactions
        if txns is None:
            return True
        current = self.consumer.generation_now(tp) == message.generation
        return current and txns.get(tp) is not None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the layer's own parts, then join the group. Idempotent."""
        if self._started:
            return
        self._stopping = False
        self.layer.error_handler.allow_dead_letter_retries()
        await self.layer.start()
        await self.consumer.start()
        self._started = True

    async def run(self) -> None:
        """Fetch and dispatch until ``stop()``; raises if processing crashed."""
        consumer, checkpoint = self.consumer, self.checkpoint
        while not self._stopping:
            dispatcher = self.dispatcher
            if dispatcher.crashed is not None:
                raise LaneCrashedError(f"flow {self.name}: a lane crashed") from dispatcher.crashed
            if self._over_bound():
                await self._backpressure()
                continue
            room = self.options.max_in_flight - dispatcher.in_flight
            fetched = await consumer.fetch_partitioned(max_records=room)
            self.outage = None
            if fetched:
                self._take(fetched)
            if checkpoint.due():
                checkpoint.request()
            self._observe()

    def _take(self, fetched: list[tuple[TopicPartition, list[ConsumedMessage]]]) -> None:
        """Count fetched messages, start their dedup claims, queue them on the lanes."""
        dedup = self.layer.dedup_step
        for tp, messages in fetched:
            self.sensor.on_consumed(tp.topic, len(messages))
            if dedup is not None:
                dedup.claim_ahead(messages, tp)
            self.dispatcher.submit_partition(tp, messages)

    async def _run_done(self, run: list[ConsumedMessage]) -> None:
        """A lane finished a run: final messages go to the checkpoint, the rest let go."""
        unfinished = self.checkpoint.add(run)
        if unfinished:
            await self._release(unfinished)
        if self.consumer.commit_policy.per_message:
            await self.checkpoint.commit()

    def _recover(self, message: ConsumedMessage, error: BaseException) -> None:
        """Retry, off its lane, a message whose outputs failed after its handler returned."""

        async def recover() -> None:
            await self.layer.recover(message, error)
            self.checkpoint.add([message])

        task = asyncio.create_task(recover(), name=f"recover-{message.location()}")
        self._recovering.add(task)
        task.add_done_callback(self._recovering.discard)

    async def _release(self, messages: Iterable[ConsumedMessage]) -> None:
        """Give back the dedup claims of messages that will not be finished here."""
        if self.layer.dedup_step is not None:
            await self.layer.dedup_step.release(messages)

    def _over_bound(self) -> bool:
        d, o = self.dispatcher, self.options
        return d.in_flight >= o.max_in_flight or d.in_flight_bytes >= o.max_in_flight_bytes

    async def _backpressure(self) -> None:
        """Pause fetching until the lanes drained to half the bound."""
        consumer, d, o = self.consumer, self.dispatcher, self.options
        consumer.pause()
        self.backpressure_pauses += 1
        last_poll = time.monotonic()
        try:
            while (
                not self._stopping
                and d.crashed is None
                and (
                    d.in_flight > o.max_in_flight // 2
                    or d.in_flight_bytes > o.max_in_flight_bytes // 2
                )
            ):
                await d.wait_progress(0.1)
                if self.checkpoint.due():
                    self.checkpoint.request()
                self._observe()
                if time.monotonic() - last_poll >= _POLL_WHILE_PAUSED_S:
                    # Keep polling so the group does not take this member for dead;
                    # partitions assigned meanwhile are not paused yet and may yield.
                    last_poll = time.monotonic()
                    fetched = await consumer.fetch_partitioned(timeout_ms=0)
                    if fetched:
                        self._take(fetched)
                    consumer.pause()
        finally:
            if consumer.is_running:
                consumer.resume()

    def _observe(self) -> None:
        sensor = self.sensor
        sensor.on_in_flight(self.dispatcher.in_flight)
        now = time.monotonic()
        if now - self._last_lag_refresh >= self.options.lag_refresh_s:
            self._last_lag_refresh = now
            for tp, (fetch_lag, committed_lag) in self.consumer.lag().items():
                sensor.on_lag(tp, fetch_lag, committed_lag)

    # ------------------------------------------------------------------ revocation

    async def _on_revoke(self, partitions: set[TopicPartition]) -> None:
        """Finish or abandon the revoked partitions' work, commit it, forget them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.revocation_timeout_s
        self._revoking |= partitions
        self.layer.halt(True)
        try:
            await self._release(self.dispatcher.drop_queued(partitions))
            timeout = max(0.0, deadline - loop.time())
            if not await self.dispatcher.wait_partitions(partitions, timeout):
                abandoned = self.dispatcher.abandon(partitions)
                logger.warning(
                    "flow %s: %d handler(s) of revoked partitions %s still running after "
                    "%s s; cancelled, not committed (the next owner runs them)",
                    self.name,
                    abandoned,
                    sorted(partitions),
                    self.options.revocation_timeout_s,
                )
                await self.dispatcher.wait_partitions(partitions, 1.0)
            await self._cancel_recovery(partitions)
            await self.checkpoint.commit(partitions, timeout_s=max(0.5, deadline - loop.time()))
        finally:
            await self.checkpoint.abandon(partitions)
            if self.transactions is not None:
                await self.transactions.close(partitions)
            self.sensor.on_partitions_revoked(partitions)
            self._revoking -= partitions
            self.layer.halt(bool(self._revoking))

    async def _cancel_recovery(self, partitions: set[TopicPartition] | None = None) -> None:
        tasks = [t for t in self._recovering if partitions is None or _task_in(t, partitions)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ crash, stop

    async def reset_after_crash(self) -> None:
        """Make the flow runnable again after ``run()`` raised, losing nothing.

        Queued messages are dropped, running ones get the drain timeout, finished
        ones are committed, and every partition is rewound to its lowest
        unfinished offset so the rest is fetched again.
        """
        dispatcher = self.dispatcher
        await self._release(dispatcher.drop_queued())
        await self._release(dispatcher.take_orphaned())
        await dispatcher.wait_idle(self.options.drain_timeout_s)
        await self._release(await dispatcher.close())
        if self.consumer.is_running:
            await self.checkpoint.commit()
            self.consumer.resume()
            self.consumer.rewind_unfinished()
        self.dispatcher = self._new_dispatcher()

    def request_stop(self) -> None:
        """Make ``run()`` return after its current fetch."""
        self._stopping = True

    async def stop(self) -> None:
        """Drop what has not started, drain what runs, commit, leave the group. Idempotent."""
        self._stopping = True
        if not self._started:
            return
        self._started = False
        self.layer.stopping = True
        # Retry backoffs and blocked dead letters end now: those messages stay
        # uncommitted and are redelivered after the restart.
        self.layer.error_handler.stop_dead_letter_retries()
        dispatcher = self.dispatcher
        try:
            await self._release(dispatcher.drop_queued())
            if not await dispatcher.wait_idle(self.options.drain_timeout_s):
                logger.error(
                    "flow %s: %d message(s) still running after the %s s drain timeout; "
                    "cancelling them (they are not committed and will be redelivered)",
                    self.name,
                    dispatcher.in_flight,
                    self.options.drain_timeout_s,
                )
            await self._release(await dispatcher.close())
            await self._cancel_recovery()
            await self.checkpoint.settled()
            if self.consumer.is_running:
                await self.checkpoint.commit()
            await self.checkpoint.abandon()
            if self.transactions is not None:
                await self.transactions.close()
        finally:
            try:
                await self.consumer.stop()
            finally:
                await self.layer.stop()

    # ------------------------------------------------------------------ health

    def health(self) -> dict[str, Any]:
        """What this flow is doing right now."""
        assignment = self.consumer.assignment()
        layer = self.layer
        timeout = layer.handler_timeout_s
        dedup = layer.dedup_step
        return {
            "topics": self.consumer.topics,
            "group_id": self.consumer.group_id,
            "started": self._started,
            "assigned_partitions": len(assignment),
            "paused_partitions": len(self.consumer.paused()),
            "in_flight": self.dispatcher.in_flight,
            "awaiting_commit": self.checkpoint.pending,
            "overdue_handlers": layer.invoker.overdue(timeout) if timeout is not None else 0,
            "waiting_on_claims": dedup.waiting if dedup is not None else 0,
            "dedup_store_failing": dedup.store_failing if dedup is not None else False,
            "dead_letter_blocked": layer.error_handler.dead_letter_blocked,
            "error_handling": layer.error_handler.health(),
            "checkpoint_error": self.checkpoint.last_error,
            "outage": self.outage,
            **(
                {"transactions": self.transactions.health()}
                if self.transactions is not None
                else {}
            ),
            "outcomes": {k.value: v for k, v in layer.outcomes.items()},
        }

    @property
    def ready(self) -> bool:
        """False while something holds the flow back: a stuck handler, dead letter or claim."""
        report = self.health()
        return not (
            report["outage"]
            or report.get("transactions", {}).get("starting")
            or report["overdue_handlers"]
            or report["waiting_on_claims"]
            or report["dedup_store_failing"]
            or report["dead_letter_blocked"]
        )


def _task_in(task: asyncio.Task[None], partitions: set[TopicPartition]) -> bool:
    name = task.get_name()
    return any(name.startswith(f"recover-{tp.topic}[{tp.partition}]") for tp in partitions)
