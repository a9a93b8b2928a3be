"""A consumer client that hands out a retry partition's records only once they are due.

A retry topic's records carry the wall-clock time they are due
(``retry.due.ms``, milliseconds since the epoch); one retry topic has one delay,
so the records of a partition come due in order. When a fetch returns a record
that is not due yet, the gate hands out the records before it, keeps it and the
records after it (at most one fetch's worth) and pauses the partition, so no
more are fetched. Each later ``getmany`` waits no longer than until the next kept
record is due, and hands kept records out as they come due; once a partition's
kept records are all out, it is resumed. Nothing sleeps in a handler, other
partitions keep flowing, the flow's bookkeeping sees records only when due, and
a due record goes out without another round trip to the broker.

Pauses the flow itself asks for (backpressure) are kept apart: resuming those
never resumes a partition that holds records until they are due. A seek, a
rebalance or a new group generation drops what was kept of a partition: it is
fetched again from wherever the consumer then stands.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from core.streaming.broker_api import ConsumerClient
from core.streaming.reliability.sensors import Sensor
from core.streaming.types import FetchedRecord, TopicPartition

#: Header with the time a retry record is due, in milliseconds since the epoch.
HEADER_DUE_MS = "retry.due.ms"
#: A record due within this many seconds is handed out at once.
DUE_TOLERANCE_S = 0.001


def due_of(record: FetchedRecord) -> float | None:
    """The time (seconds since the epoch) ``record`` is due, or None if it has no due time."""
    for name, value in record.headers:
        if name == HEADER_DUE_MS and value:
            try:
                return int(value) / 1000
            except ValueError:
                return None
    return None


class _Kept:
    """Records of one partition waiting for their due time, and the generation they are of."""

    __slots__ = ("generation", "records")

    def __init__(self, generation: int, records: Sequence[FetchedRecord]) -> None:
        self.generation = generation
        self.records: deque[FetchedRecord] = deque(records)


class DueTimeGate:
    """Wraps a ``ConsumerClient``: records are handed out no earlier than their due time."""

    def __init__(self, inner: ConsumerClient, *, clock: Callable[[], float] = time.time) -> None:
        self._inner = inner
        self._clock = clock
        self._asked_paused: set[TopicPartition] = set()
        self._kept: dict[TopicPartition, _Kept] = {}
        self.sensor: Sensor = Sensor()
        self.holds = 0

    # ------------------------------------------------------------------ the gate

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> Mapping[TopicPartition, Sequence[FetchedRecord]]:
        self._forget_stale()
        room = max_records if max_records is not None else 1 << 30
        out = self._take_due(room)
        if out:
            return out
        next_due = self._next_due()
        if next_due is not None:
            until_due = max(0, math.ceil((next_due - self._clock()) * 1000))
            timeout_ms = min(timeout_ms, until_due)
        batches = await self._inner.getmany(timeout_ms=timeout_ms, max_records=max_records)
        now = self._clock()
        for tp, records in batches.items():
            kept = self._kept.get(tp)
            if kept is not None:  # fetched before the pause took hold: they queue up behind
                kept.records.extend(records)
                continue
            for i, record in enumerate(records):
                due = due_of(record)
                if due is not None and due > now + DUE_TOLERANCE_S:
                    if i:
                        out[tp] = records[:i]
                    self._keep(tp, records[i:])
                    break
            else:
                out[tp] = records
        if not out:
            out = self._take_due(room)
        return out

    def _keep(self, tp: TopicPartition, records: Sequence[FetchedRecord]) -> None:
        self._inner.pause(tp)
        self._kept[tp] = _Kept(self._inner.generation, records)
        self.holds += 1
        self.sensor.on_retry_held(len(self._kept))

    def _take_due(self, room: int) -> dict[TopicPartition, Sequence[FetchedRecord]]:
        """Kept records that are due now, in order per partition, at most ``room``."""
        if not self._kept:
            return {}
        now = self._clock()
        out: dict[TopicPartition, Sequence[FetchedRecord]] = {}
        for tp, kept in list(self._kept.items()):
            records = kept.records
            due = due_of(records[0])
            if due is not None and due > now + DUE_TOLERANCE_S:
                continue
            self.sensor.on_retry_released(tp, max(0.0, now - due) if due is not None else 0.0)
            taken: list[FetchedRecord] = []
            while records and len(taken) < room:
                due = due_of(records[0])
                if due is not None and due > now + DUE_TOLERANCE_S:
                    break
                taken.append(records.popleft())
            room -= len(taken)
            out[tp] = taken
            if not records:
                self._release(tp)
            if room <= 0:
                break
        return out

    def _release(self, tp: TopicPartition) -> None:
        del self._kept[tp]
        self.sensor.on_retry_held(len(self._kept))
        if tp in self._inner.assignment() and tp not in self._asked_paused:
            self._inner.resume(tp)

    def _next_due(self) -> float | None:
        dues = [due_of(k.records[0]) for k in self._kept.values()]
        return min((d for d in dues if d is not None), default=None)

    def _forget_stale(self) -> None:
        """Drop what was kept of partitions no longer ours, or of an older generation."""
        if not self._kept:
            return
        assigned = self._inner.assignment()
        generation = self._inner.generation
        for tp in [
            tp for tp, k in self._kept.items() if tp not in assigned or k.generation != generation
        ]:
            del self._kept[tp]
        self.sensor.on_retry_held(len(self._kept))

    def health(self) -> dict[str, Any]:
        """Partitions holding records until due, and how soon the next one is."""
        next_due = self._next_due()
        return {
            "held_partitions": len(self._kept),
            "held_records": sum(len(k.records) for k in self._kept.values()),
            "next_due_in_s": None
            if next_due is None
            else round(max(0.0, next_due - self._clock()), 3),
            "holds": self.holds,
        }

    # ------------------------------------------------------------------ pauses, seeks

    def pause(self, *tps: TopicPartition) -> None:
        self._asked_paused.update(tps)
        self._inner.pause(*tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._asked_paused.difference_update(tps)
        ready = [tp for tp in tps if tp not in self._kept]
        if ready:
            self._inner.resume(*ready)

    def paused(self) -> set[TopicPartition]:
        """Partitions paused on request (those only holding records until due are not)."""
        return self._asked_paused & self._inner.assignment()

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if self._kept.pop(tp, None) is not None and tp not in self._asked_paused:
            self._inner.resume(tp)
        self._inner.seek(tp, offset)

    # ------------------------------------------------------------------ the rest, as is

    @property
    def generation(self) -> int:
        return self._inner.generation

    @property
    def member_id(self) -> str | None:
        return self._inner.member_id

    async def start(self) -> None:
        await self._inner.start()

    async def stop(self) -> None:
        self._kept.clear()
        await self._inner.stop()

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        await self._inner.commit(offsets)

    async def committed(self, tp: TopicPartition) -> int | None:
        return await self._inner.committed(tp)

    def assignment(self) -> set[TopicPartition]:
        return self._inner.assignment()

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._inner.highwater(tp)

    async def position(self, tp: TopicPartition) -> int:
        """The next offset the flow will be handed: the first kept record, if any."""
        kept = self._kept.get(tp)
        if kept is not None and kept.records:
            return kept.records[0].offset
        return await self._inner.position(tp)

    async def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return await self._inner.end_offsets(tps)
