"""Token numbers of this member's claim calls that failed on the client.

A claim call that times out, or is cancelled while it waits for its answer,
may still run: a stopped or slow Redis keeps the command in its socket and runs
it later. Its ids then hold claims of this member
under a token nobody here holds, and a later claim of the same ids would be
answered "held by this member" until they expire (the processing TTL). So the
numbers of failed calls are kept and sent with every claim call; the claim
script takes such claims back at once.

A number is kept until the processing TTL has passed since the first claim call
that succeeded after the failure: by then Redis has run whatever was queued
before, and what it ran has expired. At most ``limit`` numbers are kept, oldest
dropped first; a dropped one only makes its claims wait for their expiry again.
"""

from __future__ import annotations

from collections.abc import Iterable


class FailedClaimCalls:
    """The token numbers of failed claim calls, until their claims have certainly lapsed."""

    def __init__(self, processing_ttl_ms: int, limit: int = 10_000) -> None:
        self.keep_s = 2 * processing_ttl_ms / 1000
        self.limit = limit
        #: number -> monotonic time it may be forgotten (None: no call succeeded since).
        self._numbers: dict[int, float | None] = {}
        self._arg = ""

    def __len__(self) -> int:
        return len(self._numbers)

    def failed(self, numbers: Iterable[int]) -> None:
        """Remember the token numbers of calls whose outcome the client did not learn."""
        for number in numbers:
            self._numbers[number] = None
        while len(self._numbers) > self.limit:
            del self._numbers[next(iter(self._numbers))]
        self._arg = ",".join(map(str, self._numbers))

    def arg(self) -> str:
        """The numbers as the claim script's argument: ``"n,n,..."``, usually empty."""
        return self._arg

    def succeeded(self, now: float) -> None:
        """A claim call succeeded at ``now`` (monotonic): start the numbers' last TTL."""
        numbers = self._numbers
        if not numbers:
            return
        for number, until in list(numbers.items()):
            if until is None:
                numbers[number] = now + self.keep_s
            elif until <= now:
                del numbers[number]
        self._arg = ",".join(map(str, numbers))
