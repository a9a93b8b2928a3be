"""The dedup step: claim before the handler, skip duplicates, keep claims alive.

Claims are made per fetched batch, as soon as it is fetched and while earlier
messages are still being handled (:meth:`DedupStep.claim_ahead`), one script
call per partition. In the chain, the step waits for its run's claims, marks
duplicates final, runs the rest, and waits (in order) for a message whose id
another worker holds. Every claim this flow holds is renewed in the background
while its message waits in a lane, runs, retries or waits for its done mark, so
it never lapses under a live handler; one renewal call covers them all. Done
marks are written by the checkpoint (:meth:`mark_done`), claims of messages
that end without being handled are given back (:meth:`release`); that part,
and the renewal, is :mod:`held_claims`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    wait_exponential,
)

from core.streaming.infrastructure.closing import raise_if_cancelled
from core.streaming.infrastructure.consumed_message import (
    LEFT_FLOW,
    ConsumedMessage,
    Outcome,
    envelope_id,
)
from core.streaming.reliability.deduplication_manager import (
    ClaimResult,
    DeduplicationManager,
    DedupUnavailableError,
)
from core.streaming.reliability.held_claims import HeldClaims
from core.streaming.reliability.sensors import Sensor
from core.streaming.reliability.steps import Batch, Next
from core.streaming.types import TopicPartition

logger = logging.getLogger(__name__)

DedupKey = Callable[[dict[str, Any]], str | None]
Generation = Callable[[TopicPartition], int]

#: Seconds between two "waiting on another member's claims" log lines.
_WAIT_LOG_INTERVAL_S = 10.0


_DONE_HERE = frozenset({Outcome.HANDLED, Outcome.DUPLICATE})


class _StillHeld(Exception):
    """The claim is held by someone else: wait and ask again."""


class DedupStep(HeldClaims):
    """Effectively-once handling of one flow, on a :class:`DeduplicationManager`."""

    def __init__(
        self,
        dedup: DeduplicationManager,
        *,
        sensor: Sensor | None = None,
        dedup_key: DedupKey | None = None,
        generation_of: Generation | None = None,
        ordered: bool = True,
    ) -> None:
        super().__init__(dedup)
        #: The flow runs a partition's (or a key's) messages one after another in
        #: offset order, so a later copy of an event cannot run before an earlier one.
        self.ordered = ordered
        self.sensor = sensor or dedup.sensor
        self.dedup_key = dedup_key
        self.generation_of = generation_of or (lambda tp: -1)
        self.waiting = 0
        self.store_failing = False
        # Claims still being made (a message's ``claim`` is its task meanwhile).
        self._claim_tasks: set[asyncio.Task[None]] = set()
        self._last_wait_log = 0.0

    # ------------------------------------------------------------------ identity

    def identity(self, message: ConsumedMessage) -> str | None:
        """The id this message is deduplicated on, or ``None`` (not deduplicated).

        Only a valid envelope's id, or the flow's ``dedup_key`` of the value:
        never a record position or a field of a foreign object.
        """
        if self.dedup_key is not None:
            if message.value is None:
                return None
            key = self.dedup_key(message.value)
            return key if isinstance(key, str) and key else None
        return message.event_id

    # ------------------------------------------------------------------ claiming ahead

    def claim_ahead(
        self, batch: Sequence[ConsumedMessage], partition: TopicPartition | None = None
    ) -> None:
        """Start claiming a fetched batch's ids; lanes wait for the result when they run.

        ``partition``, when given, is the one partition every message of the batch
        comes from (as fetched).
        """
        if partition is None:
            by_partition: dict[TopicPartition, list[ConsumedMessage]] = {}
            for message in batch:
                by_partition.setdefault(message.topic_partition, []).append(message)
            for tp, messages in by_partition.items():
                self.claim_ahead(messages, tp)
            return
        # An undecodable message has no value, so no identity either.
        if self.dedup_key is not None:
            found = list(map(self.identity, batch))
        else:
            found = list(map(envelope_id, [m.value for m in batch]))
        if None in found:
            kept = [(m, i) for m, i in zip(batch, found, strict=True) if i is not None]
            claiming = [m for m, _ in kept]
            ids = [i for _, i in kept]
        else:
            claiming, ids = list(batch), cast("list[str]", found)
        if not claiming:
            return
        # It starts once this returns: the messages wait for it meanwhile.
        task = asyncio.create_task(
            self._claim(partition, claiming, ids), name=f"claim-{partition.topic}"
        )
        for message, event_id in zip(claiming, ids, strict=True):
            message.identity = event_id
            message.claim = task
        self._claim_tasks.add(task)
        task.add_done_callback(self._claim_tasks.discard)

    async def _claim(
        self, tp: TopicPartition, messages: list[ConsumedMessage], ids: list[str]
    ) -> None:
        task = asyncio.current_task()
        results = await self._with_store(
            lambda: self.dedup.claim_batch(
                ids, partition=f"{tp.topic}:{tp.partition}", generation=self.generation_of(tp)
            )
        )
        given_up: list[tuple[str, str]] = []
        held = self.held
        if results and results.count(results[0]) == len(results) == len(messages):
            # One answer for the whole batch (usually: all claimed under one token).
            result, token = results[0]
            if [m.claim for m in messages].count(task) == len(messages):
                for message in messages:
                    message.claim = result
                    message.claim_token = token
                if token is not None:
                    held.update(dict.fromkeys(messages, token))
                return
        for message, event_id, (result, token) in zip(messages, ids, results, strict=True):
            if message.claim is not task:
                # Released while its claim was being made: give the claim straight back.
                if token is not None:
                    given_up.append((event_id, token))
                continue
            message.claim = result
            message.claim_token = token
            if token is not None:
                held[message] = token
        if given_up:
            await self.dedup.release_claims(given_up)

    async def _with_store(self, call: Callable[[], Any]) -> Any:
        """Run a store call; under ``fail_closed`` wait for the store with backoff.

        The first attempt runs outside tenacity: it is the one that succeeds at
        full rate, and a retrying loop set up per call costs more than the call.
        """
        try:
            return await self._store_attempt(call)
        except DedupUnavailableError:
            pass
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(DedupUnavailableError),
            wait=wait_exponential(multiplier=0.05, max=5.0),
            reraise=True,
        ):
            with attempt:
                return await self._store_attempt(call)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _store_attempt(self, call: Callable[[], Any]) -> Any:
        try:
            result = await call()
        except DedupUnavailableError:
            self.store_failing = True
            raise_if_cancelled()
            raise
        raise_if_cancelled()
        self.store_failing = False
        return result

    # ------------------------------------------------------------------ in the chain

    async def __call__(self, batch: Batch, call_next: Next) -> None:
        claims = [m.claim for m in batch]
        tasks = [c for c in set(claims) if isinstance(c, asyncio.Task)]
        if tasks:
            for task in tasks:
                await asyncio.shield(task)  # raises if the claims could not be made
            claims = [m.claim for m in batch]
        if not self._reclaim and (
            claims.count(ClaimResult.CLAIMED) == len(claims)
            or (
                ClaimResult.IN_PROGRESS not in claims
                and ClaimResult.HELD_HERE not in claims
                and ClaimResult.DUPLICATE not in claims
            )
        ):
            # The usual run: every message claimed (or not deduplicated) and none to wait for.
            await call_next(batch)
        else:
            await self._run_claimed(batch, call_next)
        outcomes = [m.outcome for m in batch]
        if Outcome.DEAD_LETTERED in outcomes or Outcome.RETRY_SCHEDULED in outcomes:
            await self.release([m for m in batch if m.outcome in LEFT_FLOW])

    async def _run_claimed(self, batch: Batch, call_next: Next) -> None:
        """Run ``batch``: duplicates marked final, waiting in order for ids held elsewhere."""
        reclaim = self._reclaim
        start = 0
        size = len(batch)
        while start < size:
            end = start
            while end < size:
                message = batch[end]
                claim = message.claim
                if (
                    claim is ClaimResult.IN_PROGRESS
                    or claim is ClaimResult.HELD_HERE
                    or (reclaim and message.outcome is None and message in reclaim)
                ):
                    break
                if claim is ClaimResult.DUPLICATE and message.outcome is None:
                    message.outcome = Outcome.DUPLICATE
                end += 1
            if end > start:
                await call_next(batch[start:end])
                if any(m.outcome is None for m in batch[start:end]):
                    break  # the run was cut short (stop, revocation): the rest waits
            if end < size:
                await self._wait_for_claim(batch[end])
            start = end

    async def _wait_for_claim(self, message: ConsumedMessage) -> None:
        """Ask again, with backoff, until the id is ours, done, or bypassed."""
        event_id = message.identity
        assert event_id is not None
        tp = message.topic_partition
        foreign = False
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type((_StillHeld, DedupUnavailableError)),
                wait=wait_exponential(multiplier=0.05, max=1.0),
                reraise=True,
            ):
                with attempt:
                    if message.claim is ClaimResult.HELD_HERE:
                        holder = self.holder_of(event_id)
                        if holder is not None and holder.outcome in _DONE_HERE:
                            # Our own copy handled it; its done mark is on its way.
                            message.claim = ClaimResult.DUPLICATE
                            break
                        if holder is not None and self._queued_behind(holder, message):
                            # The holder can only run after this copy: take its claim.
                            held = self._unhold(holder)
                            if held is not None:
                                holder.claim, holder.claim_token = ClaimResult.HELD_HERE, None
                                message.claim, message.claim_token = ClaimResult.CLAIMED, held[1]
                                break
                        if holder is not None:
                            raise _StillHeld  # the copy holding it has not finished yet
                        if self.settled.holds(event_id):
                            message.claim = ClaimResult.DUPLICATE  # handled here, mark on its way
                            break
                    elif message.claim is ClaimResult.IN_PROGRESS and not foreign:
                        foreign = True
                        self._set_waiting(+1, message)
                    ((result, token),) = await self.dedup.claim_batch(
                        [event_id],
                        partition=f"{tp.topic}:{tp.partition}",
                        generation=self.generation_of(tp),
                    )
                    raise_if_cancelled()
                    message.claim, message.claim_token = result, token
                    if result is ClaimResult.IN_PROGRESS or result is ClaimResult.HELD_HERE:
                        raise _StillHeld
        finally:
            self._reclaim.discard(message)
            if foreign:
                self._set_waiting(-1, message)
        if message.claim_token is not None:
            self._hold(message, event_id, message.claim_token)
        if message.claim is ClaimResult.DUPLICATE:
            message.outcome = Outcome.DUPLICATE

    def _queued_behind(self, holder: ConsumedMessage, message: ConsumedMessage) -> bool:
        """True when ``holder`` has not started and waits behind ``message`` in its lane."""
        return (
            self.ordered
            and holder.outcome is None
            and holder.attempts == 0
            and holder.record.topic == message.record.topic
            and holder.record.partition == message.record.partition
            and holder.record.offset > message.record.offset
            and holder.record.key == message.record.key
        )

    def _set_waiting(self, delta: int, message: ConsumedMessage) -> None:
        self.waiting += delta
        self.sensor.on_waiting_on_claims(self.waiting)
        now = time.monotonic()
        if delta > 0 and now - self._last_wait_log >= _WAIT_LOG_INTERVAL_S:
            self._last_wait_log = now
            logger.warning(
                "%d message(s) wait on dedup claims another member holds, e.g. %s; they run "
                "once it finishes, or once its claim expires (at most %d ms)",
                self.waiting,
                message.location(),
                self.dedup.processing_ttl_ms,
            )

    # ------------------------------------------------------------------ renewal

    def start(self) -> None:
        """Start renewing held claims in the background."""
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_forever(), name="dedup-renewer")

    async def stop(self) -> None:
        """Stop renewing and claiming ahead."""
        tasks = [t for t in (self._renewer, *self._claim_tasks) if t is not None]
        self._renewer = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def health(self) -> dict[str, Any]:
        """Held claims, waits and store state for a health report."""
        return {
            "held_claims": len(self.held) + self.settled.claim_count,
            "waiting_on_claims": self.waiting,
            "store_failing": self.store_failing,
            **self.dedup.health(),
        }
