"""One consumer flow at run time: fetch loop, dispatcher, backpressure, drain.

The flow joins a :class:`MessageConsumer` to its :class:`ReliabilityLayer`
through a :class:`Dispatcher`. ``run()`` is the fetch loop the orchestrator
supervises; ``stop()`` drains: it stops fetching, lets in-flight handlers finish
(bounded by the drain timeout; only then are they cancelled, and their messages
are not committed), writes done marks and commits.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from core.streaming.infrastructure.consumed_message import ConsumedMessage
from core.streaming.infrastructure.message_consumer import MessageConsumer
from core.streaming.orchestration.dispatcher import Dispatcher, LaneCrashedError, OrderingMode
from core.streaming.reliability.reliability_layer import ReliabilityLayer, dedup_id
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
    revocation_timeout_s: float = 10.0
    lag_refresh_s: float = 1.0


class ConsumerFlow:
    """A consumer, its reliability layer and the dispatcher between them."""

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
        self.metrics = reliability_layer.metrics_collector
        self.dispatcher = self._new_dispatcher()
        self._stopping = False
        self._started = False
        self.backpressure_pauses = 0
        self._last_lag_refresh = 0.0
        consumer.set_revocation_hook(self._on_revoke)
        if self.metrics is not None:
            metrics = self.metrics
            group = consumer.group_id
            consumer.add_commit_listener(lambda _: metrics.record_commit(consumer_group=group))

    def _new_dispatcher(self) -> Dispatcher:
        return Dispatcher(
            self.layer.process_message,
            ordering=self.options.ordering,
            concurrency=self.options.concurrency,
        )

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
        consumer, dispatcher, layer = self.consumer, self.dispatcher, self.layer
        while not self._stopping:
            if dispatcher.crashed is not None:
                raise LaneCrashedError(f"flow {self.name}: a lane crashed") from dispatcher.crashed
            if self._over_bound():
                await self._backpressure()
                continue
            room = self.options.max_in_flight - dispatcher.in_flight
            batch = await consumer.fetch_batch(max_records=room)
            await layer.flush_done()
            await self._dispatch(batch)
            self._observe()

    async def _dispatch(self, batch: list[ConsumedMessage]) -> None:
        """Claim a fetched batch with one dedup call and queue it on the lanes."""
        if not batch:
            return
        if self.metrics is not None:
            counts = Counter(message.topic for message in batch)
            for topic, n in counts.items():
                self.metrics.record_consumed(topic, n, consumer_group=self.consumer.group_id)
        claims = await self.layer.claim_batch(batch)
        claimed_at = time.monotonic()
        for message in batch:
            message.claimed_at = claimed_at
            # A batch claim belongs to the first copy of an id; later copies in the
            # same batch claim again when their turn comes.
            claim = claims.pop(dedup_id(message), None) if message.is_decodable else None
            self.dispatcher.submit(message, claim)

    def _over_bound(self) -> bool:
        d, o = self.dispatcher, self.options
        return d.in_flight >= o.max_in_flight or d.in_flight_bytes >= o.max_in_flight_bytes

    async def _backpressure(self) -> None:
        """Pause fetching until in-flight work falls to half the bound."""
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
                await self.layer.flush_done()
                await consumer.commit_if_due()
                self._observe()
                if time.monotonic() - last_poll >= _POLL_WHILE_PAUSED_S:
                    # Keep polling so the group does not take this member for dead;
                    # partitions assigned meanwhile are not paused yet and may yield.
                    last_poll = time.monotonic()
                    await self._dispatch(await consumer.fetch_batch(timeout_ms=0))
                    consumer.pause()
        finally:
            if consumer.is_running:
                consumer.resume()

    def _observe(self) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        group = self.consumer.group_id
        metrics.set_in_flight(self.dispatcher.in_flight, consumer_group=group)
        now = time.monotonic()
        if now - self._last_lag_refresh >= self.options.lag_refresh_s:
            self._last_lag_refresh = now
            for tp, lag in self.consumer.lag().items():
                metrics.set_lag(tp.topic, tp.partition, lag, consumer_group=group)

    async def _on_revoke(self, partitions: set[TopicPartition]) -> None:
        dropped = self.dispatcher.drop_queued(partitions)
        await self.layer.release_claims(dropped)
        drained = await self.dispatcher.wait_partitions(
            partitions, self.options.revocation_timeout_s
        )
        if not drained:
            logger.warning(
                "flow %s: in-flight work of revoked partitions %s did not finish within %s s; "
                "it will not be committed",
                self.name,
                sorted(partitions),
                self.options.revocation_timeout_s,
            )
        await self.layer.flush_done()
        if self.metrics is not None:
            for tp in partitions:
                self.metrics.clear_lag(
                    tp.topic, tp.partition, consumer_group=self.consumer.group_id
                )
        if dropped:
            logger.info(
                "flow %s: %d queued messages of revoked partitions dropped", self.name, dropped
            )

    async def reset_after_crash(self) -> None:
        """Make the flow runnable again after ``run()`` raised, losing nothing.

        Queued messages are dropped, running ones get the drain timeout, finished
        ones are committed, and every partition is rewound to its lowest
        unfinished offset so the rest is fetched again.
        """
        await self.layer.release_claims(self.dispatcher.drop_queued())
        await self.layer.release_claims(self.dispatcher.take_orphaned())
        await self.dispatcher.wait_idle(self.options.drain_timeout_s)
        await self.dispatcher.close()
        await self.layer.flush_done()
        if self.consumer.is_running:
            try:
                await self.consumer.flush()
            except Exception:
                logger.exception("flow %s: commit after crash failed", self.name)
            self.consumer.resume()
            self.consumer.rewind_unfinished()
        self.dispatcher = self._new_dispatcher()

    def request_stop(self) -> None:
        """Make ``run()`` return after its current fetch."""
        self._stopping = True

    async def stop(self) -> None:
        """Drain in-flight work, write done marks, commit, leave the group. Idempotent."""
        self._stopping = True
        if not self._started:
            return
        self._started = False
        # A dead letter that cannot be written must not hold the drain: it gives up,
        # its message stays uncommitted and is redelivered after the restart.
        self.layer.error_handler.stop_dead_letter_retries()
        drained = await self.dispatcher.wait_idle(self.options.drain_timeout_s)
        if not drained:
            logger.error(
                "flow %s: %d messages still in flight after the %s s drain timeout; "
                "cancelling them (they are not committed and will be redelivered)",
                self.name,
                self.dispatcher.in_flight,
                self.options.drain_timeout_s,
            )
        await self.dispatcher.close()
        try:
            await self.layer.release_claims(self.dispatcher.take_orphaned())
            await self.layer.flush_done()
        finally:
            try:
                await self.consumer.stop()
            finally:
                await self.layer.stop()

    # ------------------------------------------------------------------ health

    @property
    def is_started(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._started

    def health(self) -> dict[str, Any]:
        """What this flow is doing right now."""
        assignment = self.consumer.assignment()
        return {
            "topics": self.consumer.topics,
            "group_id": self.consumer.group_id,
            "started": self._started,
            "assigned_partitions": len(assignment),
            "paused_partitions": len(self.consumer.paused()),
            "in_flight": self.dispatcher.in_flight,
            "dead_letter_blocked": self.layer.error_handler.dead_letter_blocked,
            "outcomes": {k.value: v for k, v in self.layer.outcomes.items()},
        }
