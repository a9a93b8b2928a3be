"""The broker-neutral client surface: what every layer above the clients talks to.

The Kafka adapter (``core.streaming.kafka``) and the embedded broker
(``core.streaming.embedded``) implement these protocols; ``core.streaming.clients``
picks one of them from the settings. This module imports no client library.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from core.streaming.types import FetchedRecord, Headers, RecordMetadata, TopicPartition, TopicSpec

if TYPE_CHECKING:
    from core.config.settings import RedpandaSettings

OffsetReset = Literal["earliest", "latest", "none"]
IsolationLevel = Literal["read_uncommitted", "read_committed"]

OFFSET_RESET_POLICIES: frozenset[str] = frozenset({"earliest", "latest", "none"})
ISOLATION_LEVELS: frozenset[str] = frozenset({"read_uncommitted", "read_committed"})

#: ``ConsumerClient.generation`` before the group handed out its first assignment.
NO_GENERATION = -1


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """How a consumer joins its group and fetches; the same on every backend.

    The four group timeouts left at None take their values from
    :class:`~core.config.settings.RedpandaSettings` (see :meth:`resolve`).

    Attributes:
        auto_offset_reset: where to start without a committed offset:
            ``"earliest"``, ``"latest"`` or ``"none"`` (raise instead).
        max_poll_records: most records one ``getmany`` returns.
        client_id: the client id the broker sees (a default per backend if None).
        session_timeout_ms: a member whose heartbeats stop this long is removed.
        heartbeat_interval_ms: how often a member heartbeats (below a third of
            the session timeout).
        max_poll_interval_ms: a member that does not poll this long leaves the group.
        rebalance_timeout_ms: how long a rebalance waits for members to give up
            their partitions and rejoin.
        isolation_level: ``"read_committed"`` hides records of open and aborted
            transactions.
    """

    auto_offset_reset: OffsetReset | str = "earliest"
    max_poll_records: int = 500
    client_id: str | None = None
    session_timeout_ms: int | None = None
    heartbeat_interval_ms: int | None = None
    max_poll_interval_ms: int | None = None
    rebalance_timeout_ms: int | None = None
    isolation_level: IsolationLevel | str = "read_uncommitted"

    def __post_init__(self) -> None:
        if self.auto_offset_reset not in OFFSET_RESET_POLICIES:
            raise ValueError(
                f"auto_offset_reset must be one of {sorted(OFFSET_RESET_POLICIES)}, "
                f"got {self.auto_offset_reset!r}"
            )
        if self.isolation_level not in ISOLATION_LEVELS:
            raise ValueError(
                f"isolation_level must be one of {sorted(ISOLATION_LEVELS)}, "
                f"got {self.isolation_level!r}"
            )
        if isinstance(self.max_poll_records, bool) or self.max_poll_records <= 0:
            raise ValueError(f"max_poll_records must be positive, got {self.max_poll_records}")
        for name in (
            "session_timeout_ms",
            "heartbeat_interval_ms",
            "max_poll_interval_ms",
            "rebalance_timeout_ms",
        ):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")

    def resolve(self, config: RedpandaSettings) -> ConsumerOptions:
        """These options with every unset timeout taken from ``config``, checked together.

        Raises ``ValueError`` when the heartbeat is not below a third of the session
        timeout, or the session timeout is above the poll or rebalance timeout.
        """
        resolved = replace(
            self,
            session_timeout_ms=self.session_timeout_ms or config.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms or config.heartbeat_interval_ms,
            max_poll_interval_ms=self.max_poll_interval_ms or config.max_poll_interval_ms,
            rebalance_timeout_ms=self.rebalance_timeout_ms or config.rebalance_timeout_ms,
        )
        resolved.check_timeouts()
        return resolved

    def check_timeouts(self) -> None:
        """Raise ``ValueError`` if the group timeouts set here contradict each other."""
        session, heartbeat = self.session_timeout_ms, self.heartbeat_interval_ms
        if session is not None and heartbeat is not None and heartbeat * 3 > session:
            raise ValueError(
                f"heartbeat_interval_ms ({heartbeat}) must be at most a third of "
                f"session_timeout_ms ({session})"
            )
        for name in ("max_poll_interval_ms", "rebalance_timeout_ms"):
            other = getattr(self, name)
            if session is not None and other is not None and other < session:
                raise ValueError(
                    f"{name} ({other}) must not be below session_timeout_ms ({session})"
                )


@runtime_checkable
class RebalanceListener(Protocol):
    """Told when the group takes partitions away or hands new ones over."""

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None: ...

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None: ...


class ConsumerClient(Protocol):
    """A group member subscribed to topics, fetching in batches, committing explicitly.

    ``generation`` is the group generation of the current assignment (-1 before
    the first one); it grows with every rebalance, so the next owner of a
    partition always sees a higher generation than its previous owner had.
    ``member_id`` is this member's id in the group (None before it joined).
    """

    @property
    def generation(self) -> int: ...

    @property
    def member_id(self) -> str | None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> Mapping[TopicPartition, Sequence[FetchedRecord]]: ...

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...

    async def committed(self, tp: TopicPartition) -> int | None: ...

    def assignment(self) -> set[TopicPartition]: ...

    def pause(self, *tps: TopicPartition) -> None: ...

    def resume(self, *tps: TopicPartition) -> None: ...

    def paused(self) -> set[TopicPartition]: ...

    def highwater(self, tp: TopicPartition) -> int | None: ...

    async def position(self, tp: TopicPartition) -> int: ...

    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    async def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]: ...


class ProducerClient(Protocol):
    """Sends bytes; ``send`` enqueues and returns an awaitable acknowledgement.

    Refusals made by the client itself (a record above ``max_request_size``, an
    illegal topic name) raise from ``send``; refusals made by the broker (a record
    above the topic's ``max.message.bytes``) arrive on the acknowledgement.
    """

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def flush(self) -> None: ...

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> Awaitable[RecordMetadata]: ...

    async def partitions_for(self, topic: str) -> set[int]: ...


class TransactionalProducerClient(ProducerClient, Protocol):
    """A producer with a ``transactional_id``: sends and offsets commit or abort together.

    ``start`` registers the id with the broker and fences every older producer
    with the same id (its open transaction is aborted and its later calls fail
    with ``ProducerFencedError``). ``send`` is allowed only inside a transaction.
    ``commit_transaction`` makes the transaction's records visible to
    ``read_committed`` consumers and its offsets the group's committed offsets,
    atomically; ``abort_transaction`` discards both. A commit that fails raises
    ``TransactionError`` (abort, then do the work again) or ``ProducerFencedError``.
    """

    @property
    def transactional_id(self) -> str: ...

    async def begin_transaction(self) -> None: ...

    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], group_id: str
    ) -> None: ...

    async def commit_transaction(self) -> None: ...

    async def abort_transaction(self) -> None: ...


class AdminClient(Protocol):
    """Creates and lists topics."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def create_topics(self, specs: Sequence[TopicSpec]) -> list[str]: ...

    async def list_topics(self) -> set[str]: ...

    async def delete_topics(self, names: Sequence[str]) -> None: ...
