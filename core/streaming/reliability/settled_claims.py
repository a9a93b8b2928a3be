"""Handled messages waiting for their done marks, kept as offsets and claims only.

A handled message that sent nothing needs two things before its offset may be
committed: its done mark written, then its offset finished. Keeping the whole
message until the checkpoint would keep its record, value and state alive for a
commit interval; at full rate that is thousands of messages the garbage
collector walks again and again. So a finished run leaves here only its offsets
(per partition and group generation, in order) and the event ids and tokens
of the claims it held, which the dedup step keeps renewing until they are marked done.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from core.streaming.infrastructure.consumed_message import ConsumedMessage
from core.streaming.types import TopicPartition

Claim = tuple[str, str]
#: (topic, partition, group generation)
RunKey = tuple[str, int, int]


class SettledRun:
    """Offsets of one partition and generation, and the claims their messages held."""

    __slots__ = ("ids", "offsets", "tokens")

    def __init__(self) -> None:
        self.offsets: list[int] = []
        #: The held claims, as two aligned lists (no tuple per message).
        self.ids: list[str] = []
        self.tokens: list[str] = []

    def claims(self) -> list[Claim]:
        """The held claims as ``(event id, token)``."""
        return list(zip(self.ids, self.tokens, strict=True))


class SettledClaims:
    """Runs of handled messages waiting for their done marks, per partition and generation."""

    def __init__(self) -> None:
        self._runs: dict[RunKey, SettledRun] = {}

    def __len__(self) -> int:
        return sum(len(run.offsets) for run in self._runs.values())

    @property
    def claim_count(self) -> int:
        """Claims held for settled messages."""
        return sum(len(run.ids) for run in self._runs.values())

    def add(self, messages: Sequence[ConsumedMessage], held: dict[ConsumedMessage, str]) -> None:
        """Keep the offsets of ``messages`` and move their claims out of ``held``."""
        runs = self._runs
        key: RunKey | None = None
        offsets: list[int] = []
        ids: list[str] = []
        tokens: list[str] = []
        pop = held.pop
        for message in messages:
            record = message.record
            if key is None or (
                key[1] != record.partition or key[0] != record.topic or key[2] != message.generation
            ):
                key = (record.topic, record.partition, message.generation)
                run = runs.get(key)
                if run is None:
                    run = runs[key] = SettledRun()
                offsets, ids, tokens = run.offsets, run.ids, run.tokens
            offsets.append(record.offset)
            token = pop(message, None)
            if token is not None and message.identity is not None:
                ids.append(message.identity)
                tokens.append(token)

    def take(self, partitions: set[TopicPartition] | None = None) -> dict[RunKey, SettledRun]:
        """Remove and return the runs (of ``partitions``, if given)."""
        if partitions is None:
            taken, self._runs = self._runs, {}
            return taken
        taken = {
            key: run
            for key, run in self._runs.items()
            if TopicPartition(key[0], key[1]) in partitions
        }
        for key in taken:
            del self._runs[key]
        return taken

    def put_back(self, taken: dict[RunKey, SettledRun]) -> None:
        """Return runs taken by :meth:`take` whose done marks were not written (older first)."""
        for key, run in taken.items():
            newer = self._runs.get(key)
            if newer is not None:
                run.offsets.extend(newer.offsets)
                run.ids.extend(newer.ids)
                run.tokens.extend(newer.tokens)
            self._runs[key] = run

    def claims(self) -> list[Claim]:
        """Every claim kept here, for renewal."""
        return [claim for run in self._runs.values() for claim in run.claims()]

    def holds(self, event_id: str) -> bool:
        """True when a settled message claimed ``event_id`` (a scan: for rare paths)."""
        return any(event_id in run.ids for run in self._runs.values())

    def forget(self, lost: Iterable[Claim]) -> None:
        """Drop claims found no longer ours; their offsets stay to be finished."""
        gone = set(lost)
        for run in self._runs.values():
            kept = [claim for claim in run.claims() if claim not in gone]
            if len(kept) != len(run.ids):
                run.ids = [event_id for event_id, _ in kept]
                run.tokens = [token for _, token in kept]
