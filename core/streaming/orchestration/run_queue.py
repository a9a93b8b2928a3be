"""A lane's waiting messages, kept in the chunks they arrived in.

Messages reach a lane a fetched partition at a time and leave it a run at a
time; keeping the chunks (instead of one deque of messages) makes both a step
per chunk, with list copies in C, rather than a Python step per message.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator

from core.streaming.infrastructure.consumed_message import ConsumedMessage


class RunQueue:
    """Waiting messages in order; :meth:`take` hands out the next run."""

    __slots__ = ("_chunks", "_size")

    def __init__(self) -> None:
        self._chunks: deque[list[ConsumedMessage]] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[ConsumedMessage]:
        return itertools.chain.from_iterable(self._chunks)

    def extend(self, messages: list[ConsumedMessage]) -> None:
        """Queue ``messages`` at the end; the queue owns the list from now on."""
        if messages:
            self._chunks.append(messages)
            self._size += len(messages)

    def extendleft(self, messages: list[ConsumedMessage]) -> None:
        """Queue ``messages`` (in order) in front of everything waiting."""
        if messages:
            self._chunks.appendleft(list(messages))
            self._size += len(messages)

    def take(self, limit: int) -> list[ConsumedMessage]:
        """The next run: up to ``limit`` messages from the front, in order."""
        chunks = self._chunks
        if not chunks:
            return []
        run = chunks.popleft()
        if len(run) > limit:
            chunks.appendleft(run[limit:])
            run = run[:limit]
        while chunks and len(run) < limit:
            chunk = chunks.popleft()
            room = limit - len(run)
            if len(chunk) > room:
                chunks.appendleft(chunk[room:])
                chunk = chunk[:room]
            run = run + chunk
        self._size -= len(run)
        return run

    def clear(self) -> list[ConsumedMessage]:
        """Remove everything; returns what was waiting."""
        left = list(self)
        self._chunks.clear()
        self._size = 0
        return left
