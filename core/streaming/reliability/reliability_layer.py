"""The reliability path of one consumer flow: its step chain around the handler.

The chain is composed once, from the features that are on:

    correlation -> metrics -> [dedup] -> [transaction] -> retry/dead letter
        -> [user steps] -> handler (with [tracing] spans and the [handler timeout])

A lane runs a run of messages through it with one call (:meth:`process_batch`);
each message ends with an :class:`Outcome`, and final ones are handed to the
flow's checkpoint, which alone commits. :meth:`process_message` is the plan's
one-message entry point.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from core.streaming.correlation import CorrelationStep
from core.streaming.errors import OutputFailedError
from core.streaming.infrastructure.consumed_message import ConsumedMessage, Outcome
from core.streaming.infrastructure.message_consumer import MessageConsumer
from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.infrastructure.transactions import PartitionTransactions
from core.streaming.reliability.dedup_step import DedupKey, DedupStep
from core.streaming.reliability.deduplication_manager import DeduplicationManager
from core.streaming.reliability.error_handler import ErrorHandler
from core.streaming.reliability.metrics_collector import MetricsCollector
from core.streaming.reliability.sensors import (
    CountingSensor,
    RunSummary,
    Sensor,
    SensorDelegate,
)
from core.streaming.reliability.steps import (
    Batch,
    BatchHandler,
    BatchHandlerInvoker,
    Handler,
    HandlerInvoker,
    Next,
    Step,
    compose,
)
from core.streaming.reliability.transaction_step import TransactionStep
from core.streaming.tracing import TracingStep, tracing_active

logger = logging.getLogger(__name__)

#: The plan's name for the outcome of one message.
MessageOutcome = Outcome


class MetricsStep:
    """Reports each finished run to the flow's sensors."""

    def __init__(self, sensor: Sensor, topics: Sequence[str] = ()) -> None:
        self.sensor = sensor
        #: The flow's one topic, if it reads only one (runs are then summed without
        #: a look at each record's topic).
        self.topic = topics[0] if len(topics) == 1 else None

    async def __call__(self, batch: Batch, call_next: Next) -> None:
        await call_next(batch)
        self.sensor.on_run_done(batch, RunSummary(batch, self.topic))


class ReliabilityLayer:
    """Cross-cutting concerns around one handler: dedup, errors, metrics, correlation."""

    def __init__(
        self,
        service_name: str,
        handler_func: Handler,
        consumer: MessageConsumer,
        deduplicator: DeduplicationManager | None = None,
        error_handler: ErrorHandler | None = None,
        metrics_collector: MetricsCollector | None = None,
        *,
        steps: Sequence[Step] = (),
        dedup_key: DedupKey | None = None,
        handler_timeout_s: float | None = None,
        batch_handler: BatchHandler | None = None,
        sensors: Sequence[Sensor] = (),
        transactions: PartitionTransactions | None = None,
        ordered: bool = True,
    ) -> None:
        self.service_name = service_name
        self.handler_func = handler_func
        self.consumer = consumer
        self.deduplicator = deduplicator
        self.metrics_collector = metrics_collector
        self.counters = CountingSensor()
        self.sensor = SensorDelegate([self.counters, *sensors])
        if metrics_collector is not None:
            self.sensor.add(metrics_collector.for_flow(consumer.group_id))
        self._owned_producer: MessageProducer | None = None
        if error_handler is None:
            self._owned_producer = MessageProducer(consumer.config, service_name)
            error_handler = ErrorHandler(
                self._owned_producer, service_name, consumer_group=consumer.group_id
            )
        error_handler.sensor = self.sensor
        self.error_handler = error_handler
        self.dedup_step: DedupStep | None = None
        if deduplicator is not None:
            deduplicator.sensor = self.sensor
            self.dedup_step = DedupStep(
                deduplicator,
                sensor=self.sensor,
                dedup_key=dedup_key,
                generation_of=consumer.group_generation_of,
                ordered=ordered,
            )
        self._stopping = False
        #: Exactly-once: a transaction per input partition (None: at-least-once).
        self.transactions = transactions
        self.transaction_step = (
            TransactionStep(transactions, consumer.generation_now) if transactions else None
        )
        operation = f"process_{'+'.join(consumer.topics)}"
        tracing = TracingStep(service_name) if tracing_active() else None
        scopes = [tracing.message_scope] if tracing else []
        if self.transaction_step is not None:
            scopes.append(self.transaction_step.message_scope)
        scopes += [s.message_scope for s in steps if hasattr(s, "message_scope")]  # type: ignore[attr-defined]
        invoker_options: dict[str, Any] = {
            "handler_timeout_s": handler_timeout_s,
            "scopes": scopes,
            "should_stop": self._should_stop,
        }
        self.invoker: HandlerInvoker = (
            BatchHandlerInvoker(batch_handler, **invoker_options)
            if batch_handler is not None
            else HandlerInvoker(handler_func, **invoker_options)
        )
        self.handler_timeout_s = handler_timeout_s
        self.user_steps = list(steps)
        self.steps: list[Step] = [
            CorrelationStep(service_name, operation),
            MetricsStep(self.sensor, consumer.topics),
            *([self.dedup_step] if self.dedup_step is not None else []),
            *([self.transaction_step] if self.transaction_step is not None else []),
            error_handler,
            *self.user_steps,
        ]
        self._chain = compose(self.steps, self.invoker)
        self._retry_chain = compose(self.user_steps, self.invoker)
        self._revoked: Callable[[ConsumedMessage], bool] = lambda message: False
        self._recovery_lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start what this layer owns (the default dead-letter producer, claim renewal)."""
        self.stopping = False
        if self._owned_producer is not None:
            await self._owned_producer.start()
        if self.dedup_step is not None:
            self.dedup_step.start()

    async def stop(self) -> None:
        """Stop what this layer owns."""
        if self.dedup_step is not None:
            await self.dedup_step.stop()
        if self._owned_producer is not None:
            await self._owned_producer.stop()

    def set_revoked(self, revoked: Callable[[ConsumedMessage], bool]) -> None:
        """Tell the invoker which messages belong to partitions being given up."""
        self._revoked = revoked

    def halt(self, on: bool) -> None:
        """Make the invoker check, between messages, whether to stop a run (or not)."""
        self.invoker.halting = on or self.stopping

    @property
    def stopping(self) -> bool:
        """True once the flow stops: runs end after their current message."""
        return self._stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self._stopping = value
        if hasattr(self, "invoker"):
            self.invoker.halting = value

    def _should_stop(self, message: ConsumedMessage) -> bool:
        return self._stopping or self._revoked(message)

    @property
    def outcomes(self) -> dict[Outcome, int]:
        """Final outcomes counted so far."""
        return self.counters.outcomes

    # ------------------------------------------------------------------ processing

    async def process_batch(self, batch: Batch) -> None:
        """Run a lane's run of messages through the chain."""
        await self._chain(batch)

    async def process_message(self, raw_message: ConsumedMessage) -> Outcome | None:
        """Take one message through the chain (the plan's entry point); its outcome.

        Dedup claims are made here for the message; committing is left to the caller.
        """
        if self.dedup_step is not None and raw_message.claim is None:
            self.dedup_step.claim_ahead([raw_message])
        await self._chain([raw_message])
        return raw_message.outcome

    async def recover(self, message: ConsumedMessage, error: BaseException) -> None:
        """Settle a handled message whose outputs failed: retry it, then dead-letter it.

        Recoveries run one at a time and each waits for its own outputs, so a
        record the broker refuses is retried alone and cannot drag the sends of
        other messages into its failed batch again. In an exactly-once flow the
        retry runs inside its partition's transaction.
        """
        if self.transaction_step is not None:

            async def inside(batch: Batch) -> None:
                await self._recover(batch[0], error)

            await self.transaction_step([message], inside)
            return
        await self._recover(message, error)

    async def _recover(self, message: ConsumedMessage, error: BaseException) -> None:
        async with self._recovery_lock:
            message.outcome, message.error = Outcome.FAILED, error
            while True:
                await self.error_handler.settle(message, self._retry_chain)
                if message.outcome is not Outcome.HANDLED or not message.outputs:
                    break
                results = await asyncio.gather(
                    *(asyncio.shield(ack) for ack in message.outputs), return_exceptions=True
                )
                message.outputs = None
                failure = next((r for r in results if isinstance(r, BaseException)), None)
                if failure is None:
                    break
                message.outcome, message.error = Outcome.FAILED, OutputFailedError.of(failure)
            if message.outcome is Outcome.DEAD_LETTERED and self.dedup_step is not None:
                await self.dedup_step.release([message])

    def health(self) -> dict[str, Any]:
        """Counters and the state of dedup and dead letters."""
        report: dict[str, Any] = {
            "outcomes": {k.value: v for k, v in self.counters.outcomes.items()},
            "dead_letter_blocked": self.error_handler.dead_letter_blocked,
        }
        if self.dedup_step is not None:
            report["dedup"] = self.dedup_step.health()
        return report
