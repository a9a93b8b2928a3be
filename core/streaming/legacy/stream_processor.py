"""The ``StreamProcessor`` base class, kept as a thin adapter over the builder.

Services written in the old shape (a subclass that passes ``service_name``,
``topics``, ``group_id``, ``config``, ``settings`` and ``redis_client`` to
``super().__init__``, overrides ``process_message(topic, message)`` or gives
per-topic handlers, and publishes with the inherited ``self.producer``) run
unchanged on the new reliability path. Underneath is one service made by
:class:`StreamServiceBuilder`: one flow over ``topics`` in ``group_id``, with
dedup, retries and dead letters, metrics, correlation, checkpointed commits and
a graceful drain, all switchable by settings like any builder-made service.

The class is deprecated: every instance warns with the builder calls that
replace it. Nothing on the consume path imports this package.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Awaitable, Mapping, Sequence
from contextvars import ContextVar, Token
from typing import Any, Protocol

from core.config.settings import RedpandaSettings, Settings
from core.streaming.clients import Redis
from core.streaming.errors import PermanentError
from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.legacy.rollout import serve
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from core.streaming.reliability.steps import Batch, Handler, Next

_topic: ContextVar[str] = ContextVar("tradestream_legacy_topic")


class _Topical(Protocol):
    @property
    def topic(self) -> str: ...


class _TopicScope:
    """Makes the topic of the message being handled readable while its handler runs."""

    __slots__ = ("_token", "topic")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._token: Token[str] | None = None

    def __enter__(self) -> None:
        self._token = _topic.set(self.topic)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _topic.reset(self._token)


class _TopicStep:
    """A step that only opens a :class:`_TopicScope` around each handler call.

    The builder's handler receives the envelope alone; ``process_message`` also
    needs the topic, which the step contract's ``message_scope`` provides.
    """

    async def __call__(self, batch: Batch, call_next: Next) -> None:
        await call_next(batch)

    def message_scope(self, message: _Topical) -> _TopicScope:
        return _TopicScope(message.topic)


def handler_method_name(topic: str) -> str:
    """``handle_<topic>`` with every character that cannot be in a name as ``_``."""
    return "handle_" + re.sub(r"\W", "_", topic)


class StreamProcessor:
    """Base class of old-style services, running on a builder-made service.

    Override ``process_message(topic, message)``, or handle each topic with a
    ``handle_<topic>`` method (dots and dashes as underscores, so
    ``market.ticks`` is ``handle_market_ticks``) or a ``handlers`` mapping.
    ``message`` is the decoded envelope. Raise to fail a message: it is retried
    if retryable, dead-lettered otherwise (``RetryableError``/``PermanentError``).

    Deprecated: use :class:`StreamServiceBuilder` (the warning names the calls).
    """

    def __init__(
        self,
        service_name: str,
        topics: Sequence[str],
        group_id: str,
        config: RedpandaSettings | None = None,
        settings: Settings | None = None,
        redis_client: Redis | None = None,
        *,
        handlers: Mapping[str, Handler] | None = None,
        produces: Sequence[str] = (),
    ) -> None:
        """Build the service (no I/O): one flow over ``topics`` in ``group_id``.

        ``redis_client`` is used for dedup (``None``: the Redis of settings),
        unless settings turn dedup off. ``produces`` names topics to create at
        start besides the consumed and dead-letter ones.
        """
        if isinstance(topics, str):
            topics = [topics]
        self.service_name = service_name
        self.topics = list(topics)
        self.group_id = group_id
        self.redis_client = redis_client
        self._handlers = self._topic_handlers(handlers or {})
        warnings.warn(self._deprecation(), DeprecationWarning, stacklevel=2)
        builder = (
            StreamServiceBuilder(service_name, config, settings)
            .with_redis(redis_client)
            .add_producer(topics=produces)
            .add_consumer_handler(self.topics, group_id, self._handle, steps=[_TopicStep()])
        )
        self.config: RedpandaSettings = builder.config
        self.settings: Settings = builder.settings
        #: The builder-made service underneath.
        self.orchestrator: ServiceOrchestrator = builder.build()
        #: The service's producer: ``send`` wraps, stamps correlation, returns the event id.
        self.producer: MessageProducer = self.orchestrator.producer

    # ------------------------------------------------------------------ override points

    async def process_message(self, topic: str, message: dict[str, Any]) -> None:
        """Handle one decoded envelope from ``topic``; by default its topic's handler."""
        handler = self._handlers.get(topic)
        if handler is None:
            raise PermanentError(f"{self.service_name} has no handler for topic {topic!r}")
        await handler(message)

    async def start(self) -> None:
        """Connect, create topics, join the group and start consuming. Idempotent."""
        await self.orchestrator.start()

    async def stop(self) -> None:
        """Drain running handlers, commit what finished, then disconnect. Idempotent."""
        await self.orchestrator.stop()

    async def serve(self, until: Awaitable[Any] | None = None) -> int:
        """Start, run until SIGTERM/SIGINT (or ``until``), stop; returns the exit code."""
        return await serve(self, until)

    async def health(self) -> dict[str, Any]:
        """The service's health report (``live``, ``ready``, components)."""
        return await self.orchestrator.health()

    # ------------------------------------------------------------------ plumbing

    async def _handle(self, event: dict[str, Any]) -> None:
        await self.process_message(_topic.get(), event)

    def _topic_handlers(self, given: Mapping[str, Handler]) -> dict[str, Handler]:
        """Each topic's handler: ``given``, else a ``handle_<topic>`` method.

        A subclass that does not override ``process_message`` must handle every
        topic; a missing one is an error now rather than a dead letter per message.
        """
        found: dict[str, Handler] = {}
        for topic in self.topics:
            handler = given.get(topic) or getattr(self, handler_method_name(topic), None)
            if handler is not None:
                found[topic] = handler
        unknown = sorted(set(given) - set(self.topics))
        if unknown:
            raise ValueError(f"handlers given for topics not consumed: {', '.join(unknown)}")
        overridden = type(self).process_message is not StreamProcessor.process_message
        missing = [t for t in self.topics if t not in found]
        if missing and not overridden:
            names = ", ".join(f"{t!r} ({handler_method_name(t)})" for t in missing)
            raise TypeError(
                f"{type(self).__name__} neither overrides process_message nor handles {names}"
            )
        return found

    def _deprecation(self) -> str:
        return (
            f"StreamProcessor is deprecated; build {self.service_name!r} with "
            f"StreamServiceBuilder({self.service_name!r}, config, settings)"
            f".with_redis(redis_client).add_producer()"
            f".add_consumer_handler({self.topics!r}, {self.group_id!r}, handler).build() "
            "(docs/migration.md)"
        )
