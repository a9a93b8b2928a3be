"""Observers of a flow: the core always calls them, and every hook does nothing by default.

A :class:`Sensor` is bound to one flow (service and consumer group are fixed
when it is made), so its hooks take only what varies: topics, messages,
counts. The flow calls one :class:`SensorDelegate`, which fans each event out
to its sensors; Prometheus metrics (:mod:`metrics_collector`) are one sensor,
and the plain counters health reports and the demo read (:class:`CountingSensor`)
are another. The core never checks whether metrics are on.

Hooks are called per run of messages or per rare event, never per message on
the hot path, except those named per message (a failure, a dead letter).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from core.streaming.infrastructure.consumed_message import ConsumedMessage, Outcome
from core.streaming.types import TopicPartition


class RunSummary:
    """What a finished run did, per topic: counted once for every sensor.

    ``topic`` names the one topic every message of the run comes from, when the
    flow reads only one (then the run is counted without a look at each record).
    """

    __slots__ = ("duplicates", "durations", "handled")

    def __init__(self, batch: Sequence[ConsumedMessage], topic: str | None = None) -> None:
        self.handled: dict[str, int] = {}
        self.duplicates: dict[str, int] = {}
        self.durations: dict[str, list[float]] = {}
        if topic is not None:
            handled = Outcome.HANDLED
            durations = [m.duration for m in batch if m.outcome is handled]
            if durations:
                self.durations[topic] = durations
                self.handled[topic] = len(durations)
            if len(durations) < len(batch):
                duplicates = [m.outcome for m in batch].count(Outcome.DUPLICATE)
                if duplicates:
                    self.duplicates[topic] = duplicates
            return
        name = ""
        durations = []
        for message in batch:
            outcome = message.outcome
            if outcome is Outcome.HANDLED:
                if message.record.topic != name:
                    name = message.record.topic
                    durations = self.durations.setdefault(name, [])
                durations.append(message.duration)
            elif outcome is Outcome.DUPLICATE:
                name = message.record.topic
                self.duplicates[name] = self.duplicates.get(name, 0) + 1
        for name, values in self.durations.items():
            self.handled[name] = len(values)


class Sensor:
    """Hooks of one flow's life; override the ones you need."""

    def on_consumed(self, topic: str, count: int) -> None:
        """``count`` messages of ``topic`` were fetched and handed to lanes."""

    def on_run_done(self, batch: Sequence[ConsumedMessage], summary: RunSummary) -> None:
        """A lane finished a run: its messages, and their outcomes counted per topic."""

    def on_failure(self, message: ConsumedMessage, error: BaseException) -> None:
        """One handler attempt failed (before any retry decision)."""

    def on_retry(self, message: ConsumedMessage, error: BaseException) -> None:
        """A failed message is about to be tried again."""

    def on_dead_letter(self, message: ConsumedMessage, error: BaseException) -> None:
        """A message was written to its dead-letter topic."""

    def on_decode_failure(self, message: ConsumedMessage) -> None:
        """A message's bytes could not be decoded."""

    def on_recovered(self, message: ConsumedMessage) -> None:
        """A message whose outputs failed after its handler returned was retried."""

    def on_commit(self, offsets: Mapping[TopicPartition, int], seconds: float) -> None:
        """Offsets were committed."""

    def on_commit_failed(self, error: BaseException) -> None:
        """A commit was refused or timed out (it is retried by the next checkpoint)."""

    def on_dedup_unavailable(self, count: int) -> None:
        """``count`` dedup operations could not reach the dedup store."""

    def on_claims_taken_over(self, count: int) -> None:
        """``count`` claims left by a previous owner of a partition were taken over."""

    def on_waiting_on_claims(self, count: int) -> None:
        """``count`` messages now wait on claims another owner holds (a gauge)."""

    def on_loop_restart(self) -> None:
        """The fetch loop crashed and was restarted."""

    def on_in_flight(self, count: int) -> None:
        """Messages in lanes now (a gauge)."""

    def on_lag(self, tp: TopicPartition, fetch_lag: int, committed_lag: int | None) -> None:
        """Lag of one partition: behind the fetch position, and behind the last commit."""

    def on_partitions_revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """The flow no longer owns ``partitions``."""

    def on_retry_scheduled(self, message: ConsumedMessage, retry_topic: str) -> None:
        """A failed message was moved to ``retry_topic`` (non-blocking retry)."""

    def on_retry_held(self, partitions: int) -> None:
        """Retry partitions now held until their head is due (a gauge)."""

    def on_retry_released(self, tp: TopicPartition, late_s: float) -> None:
        """A held retry partition's head came due; fetching resumed ``late_s`` after it."""


class SensorDelegate(Sensor):
    """Fans every hook out to a list of sensors."""

    def __init__(self, sensors: Iterable[Sensor] = ()) -> None:
        self.sensors: list[Sensor] = list(sensors)

    def add(self, sensor: Sensor) -> None:
        """Add a sensor to the fan-out."""
        self.sensors.append(sensor)

    def on_consumed(self, topic: str, count: int) -> None:
        for s in self.sensors:
            s.on_consumed(topic, count)

    def on_run_done(self, batch: Sequence[ConsumedMessage], summary: RunSummary) -> None:
        for s in self.sensors:
            s.on_run_done(batch, summary)

    def on_failure(self, message: ConsumedMessage, error: BaseException) -> None:
        for s in self.sensors:
            s.on_failure(message, error)

    def on_retry(self, message: ConsumedMessage, error: BaseException) -> None:
        for s in self.sensors:
            s.on_retry(message, error)

    def on_dead_letter(self, message: ConsumedMessage, error: BaseException) -> None:
        for s in self.sensors:
            s.on_dead_letter(message, error)

    def on_decode_failure(self, message: ConsumedMessage) -> None:
        for s in self.sensors:
            s.on_decode_failure(message)

    def on_recovered(self, message: ConsumedMessage) -> None:
        for s in self.sensors:
            s.on_recovered(message)

    def on_commit(self, offsets: Mapping[TopicPartition, int], seconds: float) -> None:
        for s in self.sensors:
            s.on_commit(offsets, seconds)

    def on_commit_failed(self, error: BaseException) -> None:
        for s in self.sensors:
            s.on_commit_failed(error)

    def on_dedup_unavailable(self, count: int) -> None:
        for s in self.sensors:
            s.on_dedup_unavailable(count)

    def on_claims_taken_over(self, count: int) -> None:
        for s in self.sensors:
            s.on_claims_taken_over(count)

    def on_waiting_on_claims(self, count: int) -> None:
        for s in self.sensors:
            s.on_waiting_on_claims(count)

    def on_loop_restart(self) -> None:
        for s in self.sensors:
            s.on_loop_restart()

    def on_in_flight(self, count: int) -> None:
        for s in self.sensors:
            s.on_in_flight(count)

    def on_lag(self, tp: TopicPartition, fetch_lag: int, committed_lag: int | None) -> None:
        for s in self.sensors:
            s.on_lag(tp, fetch_lag, committed_lag)

    def on_partitions_revoked(self, partitions: Iterable[TopicPartition]) -> None:
        for s in self.sensors:
            s.on_partitions_revoked(partitions)

    def on_retry_scheduled(self, message: ConsumedMessage, retry_topic: str) -> None:
        for s in self.sensors:
            s.on_retry_scheduled(message, retry_topic)

    def on_retry_held(self, partitions: int) -> None:
        for s in self.sensors:
            s.on_retry_held(partitions)

    def on_retry_released(self, tp: TopicPartition, late_s: float) -> None:
        for s in self.sensors:
            s.on_retry_released(tp, late_s)


class CountingSensor(Sensor):
    """Plain counters of one flow, for health reports and in-process views."""

    def __init__(self) -> None:
        self.consumed = 0
        self.outcomes: dict[Outcome, int] = dict.fromkeys(
            (Outcome.HANDLED, Outcome.DUPLICATE, Outcome.DEAD_LETTERED), 0
        )
        self.failures = 0
        self.retries = 0
        self.decode_failures = 0
        self.recovered = 0
        self.commits = 0
        self.commit_failures = 0
        self.dedup_unavailable = 0
        self.claims_taken_over = 0
        self.waiting_on_claims = 0
        self.loop_restarts = 0
        self.retries_scheduled = 0
        self.retry_partitions_held = 0

    def on_consumed(self, topic: str, count: int) -> None:
        self.consumed += count

    def on_run_done(self, batch: Sequence[ConsumedMessage], summary: RunSummary) -> None:
        outcomes = self.outcomes
        for count in summary.handled.values():
            outcomes[Outcome.HANDLED] += count
        for count in summary.duplicates.values():
            outcomes[Outcome.DUPLICATE] += count

    def on_failure(self, message: ConsumedMessage, error: BaseException) -> None:
        self.failures += 1

    def on_retry(self, message: ConsumedMessage, error: BaseException) -> None:
        self.retries += 1

    def on_dead_letter(self, message: ConsumedMessage, error: BaseException) -> None:
        self.outcomes[Outcome.DEAD_LETTERED] += 1

    def on_decode_failure(self, message: ConsumedMessage) -> None:
        self.decode_failures += 1

    def on_recovered(self, message: ConsumedMessage) -> None:
        self.recovered += 1

    def on_commit(self, offsets: Mapping[TopicPartition, int], seconds: float) -> None:
        self.commits += 1

    def on_commit_failed(self, error: BaseException) -> None:
        self.commit_failures += 1

    def on_dedup_unavailable(self, count: int) -> None:
        self.dedup_unavailable += count

    def on_claims_taken_over(self, count: int) -> None:
        self.claims_taken_over += count

    def on_waiting_on_claims(self, count: int) -> None:
        self.waiting_on_claims = count

    def on_loop_restart(self) -> None:
        self.loop_restarts += 1

    def on_retry_scheduled(self, message: ConsumedMessage, retry_topic: str) -> None:
        self.retries_scheduled += 1

    def on_retry_held(self, partitions: int) -> None:
        self.retry_partitions_held = partitions

    def snapshot(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return {
            "consumed": self.consumed,
            "handled": self.outcomes[Outcome.HANDLED],
            "duplicates": self.outcomes[Outcome.DUPLICATE],
            "dead_lettered": self.outcomes[Outcome.DEAD_LETTERED],
            "failures": self.failures,
            "retries": self.retries,
            "decode_failures": self.decode_failures,
            "recovered": self.recovered,
            "commits": self.commits,
            "commit_failures": self.commit_failures,
            "dedup_unavailable": self.dedup_unavailable,
            "claims_taken_over": self.claims_taken_over,
            "waiting_on_claims": self.waiting_on_claims,
            "loop_restarts": self.loop_restarts,
            "retries_scheduled": self.retries_scheduled,
            "retry_partitions_held": self.retry_partitions_held,
        }
