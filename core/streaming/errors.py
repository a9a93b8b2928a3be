"""Exceptions of the streaming framework, grouped by what a caller can do about them."""

from __future__ import annotations


class StreamingError(Exception):
    """Base of every error this framework raises on purpose."""


class RetryableError(StreamingError):
    """A failure worth retrying: the same message may succeed later."""


class PermanentError(StreamingError):
    """A failure that will repeat on every attempt: dead-letter the message at once."""


class ConnectionSetupError(StreamingError):
    """Connecting to the broker or Redis failed at start; the message says why."""


class BrokerUnavailableError(ConnectionSetupError, ConnectionError):
    """The broker could not be reached within the configured time."""


class RedisUnavailableError(ConnectionSetupError, ConnectionError):
    """Redis could not be reached within the configured time."""


class BrokerAccessError(ConnectionSetupError):
    """The broker cannot be used as configured (credentials, certificates, files,
    protocol): retrying cannot help. The message names the cause, never a secret."""


class RedisAccessError(ConnectionSetupError):
    """Redis cannot be used as configured (credentials, certificates, files,
    protocol): retrying cannot help. The message names the cause, never a secret."""


class ClientClosedError(StreamingError):
    """A client was used after it was stopped, or before it was started."""


class MessageTooLargeError(PermanentError):
    """A record exceeds the broker's size limit; nothing was sent."""


class CommitError(StreamingError):
    """An offset commit was refused (for example beyond the high watermark)."""


class PartitionNotAssignedError(StreamingError):
    """A per-partition call named a partition this group member does not own."""


class UnknownTopicOrPartitionError(StreamingError, ValueError):
    """The topic does not exist (and may not be created), or has no such partition."""


class DecodeError(PermanentError):
    """A message's bytes are not a decodable event; retrying cannot help."""


class EmptyRecordError(PermanentError, ValueError):
    """A record with neither key nor value: Kafka clients refuse to send one."""


class OffsetOutOfRangeError(StreamingError):
    """A partition has no valid fetch position and ``auto_offset_reset`` is ``"none"``.

    Raised when the group has no committed offset for it, or the committed offset
    lies outside the log (retention removed it, or the topic was recreated).
    """


class TopicCreationError(StreamingError, ValueError):
    """The broker refused a topic as specified (partitions, replication factor, configs)."""


class OutputFailedError(RetryableError):
    """A send a handler started failed after the handler returned.

    Retried like any transient failure: a record refused with the others of its
    broker batch succeeds on its own, one that can never be sent is dead-lettered
    once the retries are spent. The original error is the ``__cause__``.
    """

    @classmethod
    def of(cls, cause: BaseException) -> OutputFailedError:
        """The failure of a message whose send failed with ``cause``."""
        error = cls(f"a send failed after the handler returned: {cause!r}")
        error.__cause__ = cause
        return error


class ProducerFencedError(StreamingError):
    """A newer producer with the same transactional id has started: this one is a zombie.

    Its open transaction was aborted by the broker and nothing it sends or
    commits can take effect any more; the work belongs to the new owner.
    """


class TransactionError(StreamingError):
    """A transaction could not be committed; it was (or must be) aborted and done again.

    The original error is the ``__cause__``.
    """


class TransactionStateError(StreamingError):
    """A transactional call made in the wrong state (a send outside a transaction,
    a second ``begin``, a commit without one)."""
