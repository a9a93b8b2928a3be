"""The one committer of a flow: what must be true before an offset is committed.

Lanes hand every message that reached a final state to :meth:`Checkpoint.add`.
A message that sent nothing and holds no dedup claim is finished at once; the
others wait in the checkpoint's window. :meth:`Checkpoint.commit` then runs, in
this order:

1. wait for the broker's acknowledgement of every output the window's messages
   sent; a message whose send failed goes back to the error path (retry, then
   dead letter) instead of being committed;
2. write the done marks of the window's handled messages (one call); marks
   leave the window only once written, and a message whose mark cannot be
   written is not committed;
3. mark the messages that passed both as finished in the offset tracker;
4. commit, per partition, the highest contiguous finished offset + 1.

The loop calls it when the :class:`CommitPolicy` is due (at most one commit in
flight, overlapped with fetching and handling); revocation, stop and crash
recovery call the same method. Nothing else commits.

In an exactly-once flow (``transactions`` given) steps 1, 3 and 4 run per input
partition while its handlers are held between runs, and step 4 commits the
partition's transaction: its outputs and its next offset together
(:meth:`PartitionTransaction.commit`). Done marks (step 2) are written after that
commit, so a message whose transaction aborted is handled again, never skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from core.streaming.errors import OutputFailedError, ProducerFencedError
from core.streaming.infrastructure.consumed_message import (
    FINAL_OUTCOMES,
    ConsumedMessage,
    Outcome,
)
from core.streaming.infrastructure.message_consumer import MessageConsumer
from core.streaming.infrastructure.offset_tracker import CommitPolicy
from core.streaming.infrastructure.transactions import PartitionTransactions
from core.streaming.reliability.dedup_step import DedupStep
from core.streaming.reliability.deduplication_manager import DedupUnavailableError
from core.streaming.reliability.sensors import Sensor
from core.streaming.reliability.settled_claims import RunKey, SettledRun
from core.streaming.types import TopicPartition

logger = logging.getLogger(__name__)

Recover = Callable[[ConsumedMessage, BaseException], None]


class Checkpoint:
    """Outputs acknowledged, done marks written, contiguous offsets committed."""

    def __init__(
        self,
        consumer: MessageConsumer,
        *,
        policy: CommitPolicy | None = None,
        dedup: DedupStep | None = None,
        sensor: Sensor | None = None,
        recover: Recover | None = None,
        timeout_s: float = 10.0,
        transactions: PartitionTransactions | None = None,
    ) -> None:
        self.consumer = consumer
        self.policy = policy or consumer.commit_policy
        self.dedup = dedup
        self.sensor = sensor or Sensor()
        self.recover = recover
        self.timeout_s = timeout_s
        self.transactions = transactions
        self._window: list[ConsumedMessage] = []
        # Exactly-once: finished messages whose done marks wait for their transaction.
        self._unmarked: list[ConsumedMessage] = []
        self._since_commit = 0
        self._last_commit = time.monotonic()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[bool] | None = None
        self.last_error: str | None = None
        #: Commits (or parts of them) that failed; a commit without one clears ``last_error``.
        self.failures = 0

    # ------------------------------------------------------------------ intake

    def add(self, batch: Sequence[ConsumedMessage]) -> list[ConsumedMessage]:
        """Take the final messages of a finished run; returns the others (not final).

        A handled message that sent nothing and holds a dedup claim waits only for
        its done mark: it is kept as its offset and claim (:meth:`DedupStep.settle`),
        not as a message, unless the flow is exactly-once.
        """
        dedup = self.dedup
        outcomes = [m.outcome for m in batch]
        if (
            None not in outcomes
            and Outcome.FAILED not in outcomes
            and [m.outputs for m in batch].count(None) == len(batch)
        ):
            if dedup is None:
                # The usual run without dedup: all final, nothing sent, finished at once.
                self.consumer.finish_many(batch)
                self._since_commit += len(batch)
                return []
            if self.transactions is None and outcomes.count(Outcome.HANDLED) == len(batch):
                # The usual run with dedup: all handled, nothing sent; marks to write.
                dedup.settle(batch)
                self._since_commit += len(batch)
                return []
        held = dedup.held if dedup is not None else None
        settle = dedup is not None and self.transactions is None
        window = self._window
        ready: list[ConsumedMessage] = []
        settling: list[ConsumedMessage] = []
        unfinished: list[ConsumedMessage] = []
        for message in batch:
            outcome = message.outcome
            if outcome is None or outcome is Outcome.FAILED:
                unfinished.append(message)
            elif message.outputs is None and (held is None or message not in held):
                ready.append(message)
            elif message.outputs is None and settle and outcome is Outcome.HANDLED:
                settling.append(message)
            else:
                window.append(message)
        self.consumer.finish_many(ready)
        if settling and dedup is not None:
            dedup.settle(settling)
        self._since_commit += len(batch) - len(unfinished)
        return unfinished

    @property
    def pending(self) -> int:
        """Final messages waiting for their outputs or done marks."""
        return len(self._window) + (len(self.dedup.settled) if self.dedup is not None else 0)

    def due(self) -> bool:
        """True when the policy says to commit now."""
        if not self._since_commit and not self.pending:
            return False
        policy = self.policy
        return (
            policy.per_message
            or self._since_commit >= policy.every
            or self.pending >= policy.every
            or (time.monotonic() - self._last_commit) * 1000 >= policy.interval_ms
        )

    def request(self) -> None:
        """Commit in the background unless a commit is already running."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.commit(), name="checkpoint")

    async def settled(self) -> None:
        """Wait for a background commit to end."""
        task = self._task
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    # ------------------------------------------------------------------ the commit

    async def commit(
        self, partitions: set[TopicPartition] | None = None, *, timeout_s: float | None = None
    ) -> bool:
        """Run the checkpoint's steps (for ``partitions`` only, if given); True if committed.

        Every wait is bounded by ``timeout_s`` (the checkpoint's own by default):
        what cannot be settled in time stays uncommitted.
        """
        limit = self.timeout_s if timeout_s is None else timeout_s
        async with self._lock:
            failures = self.failures
            self._since_commit = 0
            self._last_commit = time.monotonic()
            if self.transactions is not None:
                return await self._commit_transactions(self.transactions, partitions, limit)
            window = self._take_window(partitions)
            settled = self.dedup.settled.take(partitions) if self.dedup is not None else {}
            keep: list[ConsumedMessage] = []
            try:
                ready = await asyncio.wait_for(self._settle(window, keep, settled), limit)
            except BaseException as exc:
                # Nothing of this window is finished: it stays for the next commit
                # (messages handed back to the error path are no longer final).
                self._window.extend(m for m in window if m.outcome in FINAL_OUTCOMES)
                if settled and self.dedup is not None:
                    self.dedup.settled.put_back(settled)
                if not isinstance(exc, TimeoutError):
                    raise
                self._fail(TimeoutError(f"outputs or done marks not settled within {limit:g} s"))
                ready, settled = [], {}
            else:
                self._window.extend(keep)
            # 3. finish what passed
            self.consumer.finish_many(ready)
            for (topic, partition, generation), run in settled.items():
                self.consumer.finish_offsets(
                    TopicPartition(topic, partition), generation, run.offsets
                )
            # 4. commit contiguous finished offsets
            offsets = self.consumer.pending_offsets(partitions)
            if not offsets:
                return True
            started = time.monotonic()
            try:
                await asyncio.wait_for(self.consumer.commit_offsets(offsets), limit)
            except Exception as exc:
                self._fail(exc)
                return False
            if self.failures == failures:
                self.last_error = None
            self.sensor.on_commit(offsets, time.monotonic() - started)
            return True

    def _take_window(self, partitions: set[TopicPartition] | None) -> list[ConsumedMessage]:
        if partitions is None:
            window, self._window = self._window, []
            return window
        mine = [m for m in self._window if m.topic_partition in partitions]
        self._window = [m for m in self._window if m.topic_partition not in partitions]
        return mine

    def _take_partition(self, tp: TopicPartition) -> list[ConsumedMessage]:
        """The window's messages of ``tp`` (one pass, no per-message tuple)."""
        topic, partition = tp
        mine: list[ConsumedMessage] = []
        rest: list[ConsumedMessage] = []
        for message in self._window:
            record = message.record
            if record.partition == partition and record.topic == topic:
                mine.append(message)
            else:
                rest.append(message)
        self._window = rest
        return mine

    async def _commit_transactions(
        self,
        transactions: PartitionTransactions,
        partitions: set[TopicPartition] | None,
        limit: float,
    ) -> bool:
        """Exactly-once: commit each input partition's transaction that has work in it."""
        owned = transactions.partitions()
        busy = {m.topic_partition for m in self._window}
        busy.update(self.consumer.pending_offsets(owned))
        busy.update(tp for tp in owned if (p := transactions.get(tp)) is not None and p.kept)
        chosen = busy & owned if partitions is None else partitions & owned
        results = await asyncio.gather(
            *(self._commit_partition(transactions, tp, limit) for tp in sorted(chosen))
        )
        if all(results) and not self._window:
            self.last_error = None
        return all(results)

    async def _commit_partition(
        self, transactions: PartitionTransactions, tp: TopicPartition, limit: float
    ) -> bool:
        """Steps 1, 3, 4 (the partition's transaction) and then 2, for one partition."""
        ptx = transactions.get(tp)
        if ptx is None:
            return False
        started = time.monotonic()
        try:
            # Handlers of the partition pause between runs while it commits.
            await asyncio.wait_for(ptx.lock.acquire(), limit)
        except TimeoutError:
            self._fail(TimeoutError(f"{tp} stayed busy for {limit:g} s; committed later"))
            return False
        try:
            window = self._take_partition(tp)
            try:
                ready = await asyncio.wait_for(self._settle(window, [], marks=False), limit)
            except BaseException as exc:
                self._window.extend(m for m in window if m.outcome in FINAL_OUTCOMES)
                if not isinstance(exc, TimeoutError):
                    raise
                self._fail(TimeoutError(f"outputs of {tp} not acknowledged within {limit:g} s"))
                return False
            held = self.dedup.held if self.dedup is not None else None
            for message in ready:
                self.consumer.mark_finished(message)
                if held is not None and message in held and message.outcome is Outcome.HANDLED:
                    self._unmarked.append(message)
            position = self.consumer.pending_offsets({tp}).get(tp)
            committed = await ptx.commit(position)
        except ProducerFencedError as exc:
            transactions.note_fenced(ptx)
            self._fail(exc)
            return False
        except Exception as exc:
            self._fail(exc)
            return False
        finally:
            ptx.lock.release()
        if position is not None:
            self.consumer.record_committed({tp: position})
        if committed:
            self.sensor.on_commit(
                {tp: position} if position is not None else {}, time.monotonic() - started
            )
        await self._mark_committed(tp)
        return True

    async def _mark_committed(self, tp: TopicPartition) -> None:
        """Step 2 of an exactly-once flow: done marks of messages whose offsets committed."""
        if self.dedup is None or not self._unmarked:
            return
        committed = self.consumer.committed_offset(tp)
        if committed is None:
            return
        due = [m for m in self._unmarked if m.topic_partition == tp and m.offset < committed]
        if not due:
            return
        try:
            await self.dedup.mark_done(due)
        except DedupUnavailableError as exc:
            self._fail(exc)  # kept: written at a later checkpoint
            return
        marked = set(map(id, due))
        self._unmarked = [m for m in self._unmarked if id(m) not in marked]

    async def _settle(
        self,
        window: list[ConsumedMessage],
        keep: list[ConsumedMessage],
        settled: dict[RunKey, SettledRun] | None = None,
        *,
        marks: bool = True,
    ) -> list[ConsumedMessage]:
        """Steps 1 and 2: the messages that may be finished; ``keep`` gets those to retry.

        ``settled`` runs are marked done in the same call; when that fails they go
        back to the dedup step and ``settled`` is emptied (nothing of it finishes).
        """
        # 1. outputs acknowledged
        with_outputs = [m for m in window if m.outputs]
        if with_outputs:
            acks = [(m, ack) for m in with_outputs for ack in m.outputs or ()]
            # Shielded: a checkpoint cut short by its timeout must not cancel the sends.
            results = await asyncio.gather(
                *(asyncio.shield(ack) for _, ack in acks), return_exceptions=True
            )
            failed: dict[int, BaseException] = {}
            for (message, _), result in zip(acks, results, strict=True):
                if isinstance(result, BaseException):
                    failed.setdefault(id(message), result)
            for message in with_outputs:
                message.outputs = None
                error = failed.get(id(message))
                if error is not None:
                    self._output_failed(message, error)
            if failed:
                window = [m for m in window if id(m) not in failed]
        # 2. done marks written
        if marks and self.dedup is not None:
            held = self.dedup.held
            handled = [m for m in window if m in held and m.outcome is Outcome.HANDLED]
            if handled or settled:
                try:
                    await self.dedup.mark_done(handled, settled)
                except DedupUnavailableError as exc:
                    self._fail(exc)
                    unmarked = set(map(id, handled))
                    keep.extend(handled)
                    window = [m for m in window if id(m) not in unmarked]
                    if settled:
                        self.dedup.settled.put_back(settled)
                        settled.clear()
        return window

    def _output_failed(self, message: ConsumedMessage, cause: BaseException) -> None:
        error = OutputFailedError.of(cause)
        message.outcome, message.error = Outcome.FAILED, error
        logger.warning(
            "a send of %s failed after its handler returned (%s: %s); the message is "
            "retried, not committed",
            message.location(),
            type(cause).__name__,
            cause,
        )
        self.sensor.on_recovered(message)
        ptx = self.transactions.get(message.topic_partition) if self.transactions else None
        if ptx is not None:
            ptx.refused(message.offset, cause)  # its retry sends them again
        if self.recover is not None:
            self.recover(message, error)

    def _fail(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.sensor.on_commit_failed(exc)
        logger.warning(
            "checkpoint of group %s failed, retried later: %s",
            self.consumer.group_id,
            self.last_error,
        )

    def drop(self, partitions: set[TopicPartition] | None = None) -> list[ConsumedMessage]:
        """Forget window messages (of ``partitions``) that will not be committed here."""
        dropped = self._take_window(partitions)
        if self._unmarked:
            gone = [
                m for m in self._unmarked if partitions is None or m.topic_partition in partitions
            ]
            self._unmarked = [m for m in self._unmarked if m not in gone]
            dropped.extend(gone)
        return dropped

    async def abandon(self, partitions: set[TopicPartition] | None = None) -> None:
        """Forget what will not be committed here (of ``partitions``) and give back its claims."""
        dropped = self.drop(partitions)
        if self.dedup is not None:
            await self.dedup.release(dropped)
            await self.dedup.release_settled(self.dedup.settled.take(partitions))

    def health(self) -> dict[str, Any]:
        """Window size and the last failure, for health reports."""
        return {"pending": self.pending, "last_error": self.last_error}
