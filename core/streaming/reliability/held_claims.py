"""The dedup claims a flow holds, from claim to done mark or release, kept alive meanwhile.

Which message holds which claim (its owner token; the id is the message's
identity), the settled runs whose handled messages wait only for their done
marks (:mod:`settled_claims`), writing those marks, giving claims back, and
renewing every claim in one call per renewal interval so none lapses under a
live handler. :class:`~core.streaming.reliability.dedup_step.DedupStep` builds
on it with the claiming and the chain step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence

from core.streaming.infrastructure.closing import raise_if_cancelled
from core.streaming.infrastructure.consumed_message import ConsumedMessage
from core.streaming.reliability.deduplication_manager import (
    DeduplicationManager,
    DedupUnavailableError,
)
from core.streaming.reliability.settled_claims import RunKey, SettledClaims, SettledRun

logger = logging.getLogger(__name__)


class HeldClaims:
    """The claims of one flow: held by messages, settled, marked done, released, renewed."""

    def __init__(self, dedup: DeduplicationManager) -> None:
        self.dedup = dedup
        #: Claims this flow holds: message -> our token (the id is ``message.identity``).
        self.held: dict[ConsumedMessage, str] = {}
        #: Claims of handled messages that left their run and wait for done marks.
        self.settled = SettledClaims()
        #: Messages whose claim was lost before they ran: claimed again first.
        self._reclaim: set[ConsumedMessage] = set()
        self._renewer: asyncio.Task[None] | None = None

    async def mark_done(
        self,
        messages: Sequence[ConsumedMessage],
        settled: dict[RunKey, SettledRun] | None = None,
    ) -> None:
        """Write done marks of handled messages we claimed (and of ``settled`` runs), one call.

        Only once written are their claims forgotten. Raises
        :class:`DedupUnavailableError` under ``fail_closed`` when the store
        fails: the marks stay to write, and the caller must not commit them.
        """
        held = self.held
        ids = [m.identity for m in messages if m in held and m.identity is not None]
        if settled:
            for run in settled.values():
                ids.extend(run.ids)
        if ids:
            await self.dedup.mark_done_many(ids)
        for message in messages:
            held.pop(message, None)

    def settle(self, messages: Sequence[ConsumedMessage]) -> None:
        """Keep only the offsets and claims of handled messages that sent nothing."""
        self.settled.add(messages, self.held)

    async def release_settled(self, runs: dict[RunKey, SettledRun]) -> None:
        """Give back the claims of settled runs that will not be committed here."""
        claims = [claim for run in runs.values() for claim in run.claims()]
        if claims:
            await self.dedup.release_claims(claims)

    async def release(self, messages: Iterable[ConsumedMessage]) -> None:
        """Give back the claims of messages that end without a done mark."""
        claims = []
        for message in messages:
            held = self._unhold(message)
            if isinstance(message.claim, asyncio.Task):
                message.claim = None  # still being claimed: the claim is given back on arrival
            if held is not None:
                claims.append(held)
        if claims:
            await self.dedup.release_claims(claims)

    def _hold(self, message: ConsumedMessage, event_id: str, token: str) -> None:
        self.held[message] = token

    def _unhold(self, message: ConsumedMessage) -> tuple[str, str] | None:
        token = self.held.pop(message, None)
        return None if token is None or message.identity is None else (message.identity, token)

    def holder_of(self, event_id: str) -> ConsumedMessage | None:
        """The message of this flow holding the claim of ``event_id``, if any.

        A scan of the held claims: only a copy found held here asks, which is rare.
        """
        for message in self.held:
            if message.identity == event_id:
                return message
        return None

    async def _renew_forever(self) -> None:
        interval = self.dedup.processing_ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(DedupUnavailableError):
                await self.renew_now()
            raise_if_cancelled()

    async def renew_now(self) -> None:
        """Renew every held claim now; a claim found lost is claimed again before it runs."""
        items = [(m, (m.identity, token)) for m, token in self.held.items() if m.identity]
        settled = self.settled.claims()
        if not items and not settled:
            return
        alive = await self.dedup.renew([claim for _, claim in items] + settled)
        lost = [claim for claim, ok in zip(settled, alive[len(items) :], strict=True) if not ok]
        if lost:
            self.settled.forget(lost)  # handled already: only their done marks are skipped
        for (message, _), ok in zip(items, alive[: len(items)], strict=True):
            if ok:
                continue
            self._unhold(message)
            if message.outcome is None:
                message.claim = None
                message.claim_token = None
                self._reclaim.add(message)
                logger.warning(
                    "dedup claim of %s was lost before its handler finished; it is "
                    "claimed again before it runs",
                    message.location(),
                )
