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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from core.streaming.errors import OutputFailedError
from core.streaming.infrastructure.consumed_message import (
    FINAL_OUTCOMES,
    ConsumedMessage,
    Outcome,
)
from core.streaming.infrastructure.message_consumer import MessageConsumer
from core.streaming.infrastructure.offset_tracker import CommitPolicy
from core.streaming.reliability.dedup_step import DedupStep
from core.streaming.reliability.deduplication_manager import DedupUnavailableError
from core.streaming.reliability.sensors import Sensor
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
    ) -> None:
        self.consumer = consumer
        self.policy = policy or consumer.commit_policy
        self.dedup = dedup
        self.sensor = sensor or Sensor()
        self.recover = recover
        self.timeout_s = timeout_s
        self._window: list[ConsumedMessage] = []
        self._since_commit = 0
        self._last_commit = time.monotonic()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[bool] | None = None
        self.last_error: str | None = None

    # ------------------------------------------------------------------ intake

    def add(self, batch: Sequence[ConsumedMessage]) -> list[ConsumedMessage]:
        """Take the final messages of a finished run; returns the others (not final)."""
        held = self.dedup.held if self.dedup is not None else None
        window = self._window
        ready: list[ConsumedMessage] = []
        unfinished: list[ConsumedMessage] = []
        for message in batch:
            outcome = message.outcome
            if outcome is None or outcome is Outcome.FAILED:
                unfinished.append(message)
            elif message.outputs is None and (held is None or message not in held):
                ready.append(message)
            else:
                window.append(message)
        self.consumer.finish_many(ready)
        self._since_commit += len(batch) - len(unfinished)
        return unfinished

    @property
    def pending(self) -> int:
        """Final messages waiting for their outputs or done marks."""
        return len(self._window)

    def due(self) -> bool:
        """True when the policy says to commit now."""
        if not self._since_commit and not self._window:
            return False
        policy = self.policy
        return (
            policy.per_message
            or self._since_commit >= policy.every
            or len(self._window) >= policy.every
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
            self._since_commit = 0
            self._last_commit = time.monotonic()
            window = self._take_window(partitions)
            keep: list[ConsumedMessage] = []
            try:
                ready = await asyncio.wait_for(self._settle(window, keep), limit)
            except BaseException as exc:
                # Nothing of this window is finished: it stays for the next commit
                # (messages handed back to the error path are no longer final).
                self._window.extend(m for m in window if m.outcome in FINAL_OUTCOMES)
                if not isinstance(exc, TimeoutError):
                    raise
                self._fail(TimeoutError(f"outputs or done marks not settled within {limit:g} s"))
                ready = []
            else:
                self._window.extend(keep)
            # 3. finish what passed
            self.consumer.finish_many(ready)
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
            if not self._window:
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

    async def _settle(
        self, window: list[ConsumedMessage], keep: list[ConsumedMessage]
    ) -> list[ConsumedMessage]:
        """Steps 1 and 2: the messages that may be finished; ``keep`` gets those to retry."""
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
        if self.dedup is not None:
            held = self.dedup.held
            handled = [m for m in window if m in held and m.outcome is Outcome.HANDLED]
            if handled:
                try:
                    await self.dedup.mark_done(handled)
                except DedupUnavailableError as exc:
                    self._fail(exc)
                    unmarked = set(map(id, handled))
                    keep.extend(handled)
                    window = [m for m in window if id(m) not in unmarked]
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
        if self.recover is not None:
            self.recover(message, error)

    def _fail(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.sensor.on_commit_failed(exc)
        logger.warning(
            "checkpoint of group %s failed, retried later: %s",
            self.consumer.group_id,
            self.last_error,
        )

    def drop(self, partitions: set[TopicPartition] | None = None) -> list[ConsumedMessage]:
        """Forget window messages (of ``partitions``) that will not be committed here."""
        return self._take_window(partitions)

    def health(self) -> dict[str, Any]:
        """Window size and the last failure, for health reports."""
        return {"pending": len(self._window), "last_error": self.last_error}
