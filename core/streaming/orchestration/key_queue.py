"""Messages waiting per key, handed to whichever lane is free: key order, no idle lanes.

Used by the dispatcher for ``ordering="key"`` with ``concurrency`` above one. A
key's messages wait in one queue of their own; a lane that is free takes
*ready* keys (keys with waiting messages that no lane is running), those with
the most waiting first, and runs their messages. While a lane runs a key, the
key's newer messages wait, so a key's messages run one after another in log
order, on one lane at a time; but a key is bound to no lane in between, so lanes
never sit idle while another lane has keys waiting (a key's next messages go to
the first lane free). This is the shape of Confluent's Parallel Consumer key
ordering.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Hashable, Iterator

from core.streaming.infrastructure.consumed_message import ConsumedMessage

KeyOf = Callable[[ConsumedMessage], Hashable]


def record_key(message: ConsumedMessage) -> Hashable:
    """A message's ordering key: its record key within its partition."""
    record = message.record
    return record.partition, record.topic, record.key


class KeyQueue:
    """Waiting messages per key, the keys ready to run, and the keys running."""

    def __init__(self, key_of: KeyOf = record_key) -> None:
        self.key_of = key_of
        self._waiting: dict[Hashable, deque[ConsumedMessage]] = {}
        # Ready keys, most waiting messages first (then oldest first): keys with long
        # backlogs start early, so no key's backlog is left to run alone at the end.
        # An entry whose key was taken, dropped or started running since is skipped.
        self._ready: list[tuple[int, int, Hashable]] = []
        self._order = itertools.count()
        self._running: set[Hashable] = set()
        #: Messages waiting (not running).
        self.size = 0

    def push(self, messages: list[ConsumedMessage]) -> int:
        """Queue messages (in log order) behind their keys; how many keys became ready."""
        waiting, key_of, running = self._waiting, self.key_of, self._running
        touched: dict[Hashable, deque[ConsumedMessage]] = {}
        became_ready = 0
        for message in messages:
            key = key_of(message)
            queue = waiting.get(key)
            if queue is None:
                queue = waiting[key] = deque()
                if key not in running:
                    became_ready += 1
            queue.append(message)
            touched[key] = queue
        self.size += len(messages)
        for key, queue in touched.items():
            if key not in running:
                self._make_ready(key, len(queue))
        return became_ready

    def _make_ready(self, key: Hashable, backlog: int) -> None:
        heapq.heappush(self._ready, (-backlog, next(self._order), key))

    @property
    def ready(self) -> bool:
        """True when some key has messages waiting and no lane runs it."""
        return bool(self._ready)

    def take(self, limit: int) -> tuple[list[ConsumedMessage], list[Hashable]]:
        """Up to ``limit`` messages of the oldest ready keys (at least one key), and the keys.

        The keys count as running until :meth:`release`.
        """
        run: list[ConsumedMessage] = []
        keys: list[Hashable] = []
        waiting, ready, running = self._waiting, self._ready, self._running
        while ready and len(run) < limit:
            key = heapq.heappop(ready)[2]
            queue = waiting.get(key)
            if queue is None or key in running:
                continue  # a stale entry
            room = limit - len(run)
            if len(queue) <= room:
                run.extend(queue)
                del waiting[key]
            else:
                run.extend(queue.popleft() for _ in range(room))
            running.add(key)
            keys.append(key)
        self.size -= len(run)
        return run, keys

    def release(self, keys: list[Hashable], unrun: list[ConsumedMessage]) -> int:
        """A lane is done with ``keys``; ``unrun`` (in order) go back to the front of theirs.

        Returns how many keys became ready.
        """
        waiting, key_of = self._waiting, self.key_of
        for message in reversed(unrun):
            key = key_of(message)
            queue = waiting.get(key)
            if queue is None:
                queue = waiting[key] = deque()
            queue.appendleft(message)
        self.size += len(unrun)
        became_ready = 0
        for key in keys:
            self._running.discard(key)
            queue = waiting.get(key)
            if queue is not None:
                self._make_ready(key, len(queue))
                became_ready += 1
        return became_ready

    def drop(self, leaves: Callable[[ConsumedMessage], bool]) -> list[ConsumedMessage]:
        """Remove and return the waiting messages for which ``leaves`` is true."""
        dropped: list[ConsumedMessage] = []
        for key, queue in list(self._waiting.items()):
            keep = [m for m in queue if not leaves(m)]
            if len(keep) == len(queue):
                continue
            dropped.extend(m for m in queue if leaves(m))
            if keep:
                self._waiting[key] = deque(keep)
            else:
                del self._waiting[key]
        self.size -= len(dropped)
        return dropped

    def messages(self) -> Iterator[ConsumedMessage]:
        """Every waiting message."""
        for queue in self._waiting.values():
            yield from queue

    def clear(self) -> list[ConsumedMessage]:
        """Forget everything; returns the messages that were waiting."""
        left = list(self.messages())
        self._waiting.clear()
        self._ready.clear()
        self._running.clear()
        self.size = 0
        return left
