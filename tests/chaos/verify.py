"""The Jepsen-style verifier of a chaos run: what the topics, Redis and side-effect logs say.

``collect`` reads the input, output and dead-letter topics to their ends, the
group's committed offsets and the side-effect logs; ``judge`` turns them into a
:class:`Verdict` with pure code (unit-tested on made-up histories in
``test_verifier.py``):

- every input handled at least once (a side effect ``E``), every poison event
  dead-lettered: anything else is **lost** (poison counted apart);
- an input with more than one ``E`` is a **duplicated side effect**;
- handler starts (``S``) beyond the first per input are **re-executions**, held
  against the bound ``max_in_flight`` x (processes killed or frozen);
- committed offsets equal the end offsets, partition by partition;
- no offset **skipped**: none unhandled below a handled one in its partition;
- each dead letter carries its provenance (original topic, partition, offset);
- recovery: the longest an input produced around or after a fault waited for
  its first side effect.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

# The dead-letter headers, spelled out: the verifier does not trust the code it checks.
HEADER_ORIGINAL_TOPIC = "dlq.original.topic"
HEADER_ORIGINAL_PARTITION = "dlq.original.partition"
HEADER_ORIGINAL_OFFSET = "dlq.original.offset"


@dataclass(frozen=True)
class InputRecord:
    partition: int
    offset: int
    event_id: str
    produced_at: float
    poison: bool


@dataclass(frozen=True)
class DeadLetter:
    event_id: str | None
    original_topic: str | None
    original_partition: int | None
    original_offset: int | None


@dataclass(frozen=True)
class Fault:
    at: float
    label: str
    interrupts: int = 0  # processes killed or frozen by it (bound of re-executions)


@dataclass
class History:
    topic: str
    inputs: list[InputRecord]
    effects: dict[str, list[tuple[str, float]]]
    outputs: Counter[str]
    dead_letters: list[DeadLetter]
    committed: dict[int, int]
    ends: dict[int, int]
    faults: list[Fault] = field(default_factory=list)


@dataclass
class Verdict:
    inputs: int
    poison: int
    lost: list[str]
    lost_poison: list[str]
    duplicated_effects: int
    reexecutions: int
    reexecution_bound: int
    uncommitted: dict[int, tuple[int, int]]
    skipped: list[tuple[int, int]]
    bad_provenance: list[str]
    missing_outputs: int
    unexpected_dead_letters: int
    latency_p50_s: float
    recovery_s: dict[str, float]
    handled_rate: float = 0.0

    @property
    def ok(self) -> bool:
        """At-least-once held and the bounds were kept (duplicates are reported, not failed)."""
        return (
            not self.lost
            and not self.lost_poison
            and not self.uncommitted
            and not self.skipped
            and not self.bad_provenance
            and self.missing_outputs == 0
            and self.reexecutions <= self.reexecution_bound
        )

    def problems(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{len(self.lost)} lost (e.g. {self.lost[:3]})")
        if self.lost_poison:
            out.append(f"{len(self.lost_poison)} poison events not dead-lettered")
        if self.uncommitted:
            out.append(f"committed != end on {self.uncommitted}")
        if self.skipped:
            out.append(f"{len(self.skipped)} offsets skipped (e.g. {self.skipped[:3]})")
        if self.bad_provenance:
            out.append(f"{len(self.bad_provenance)} dead letters without provenance")
        if self.missing_outputs:
            out.append(f"{self.missing_outputs} inputs without an output event")
        if self.reexecutions > self.reexecution_bound:
            out.append(f"{self.reexecutions} re-executions > bound {self.reexecution_bound}")
        return out


def judge(history: History, max_in_flight: int) -> Verdict:
    """Check a run's history against the delivery contract."""
    starts: Counter[str] = Counter()
    ends_seen: Counter[str] = Counter()
    first_effect: dict[str, float] = {}
    for event_id, lines in history.effects.items():
        for kind, at in lines:
            if kind == "S":
                starts[event_id] += 1
            elif kind == "E":
                ends_seen[event_id] += 1
                first_effect[event_id] = min(at, first_effect.get(event_id, at))
    dead = {d.event_id for d in history.dead_letters if d.event_id}
    by_position = {(r.partition, r.offset): r for r in history.inputs}

    lost: list[str] = []
    lost_poison: list[str] = []
    done_positions: set[tuple[int, int]] = set()
    for record in history.inputs:
        finished = record.event_id in dead if record.poison else record.event_id in ends_seen
        if finished:
            done_positions.add((record.partition, record.offset))
        else:
            (lost_poison if record.poison else lost).append(record.event_id)

    highest_done: dict[int, int] = defaultdict(lambda: -1)
    for partition, offset in done_positions:
        highest_done[partition] = max(highest_done[partition], offset)
    skipped = sorted(
        (r.partition, r.offset)
        for r in history.inputs
        if (r.partition, r.offset) not in done_positions and r.offset < highest_done[r.partition]
    )

    bad_provenance = []
    for letter in history.dead_letters:
        source = None
        if letter.original_partition is not None and letter.original_offset is not None:
            source = by_position.get((letter.original_partition, letter.original_offset))
        if (
            letter.original_topic != history.topic
            or source is None
            or source.event_id != letter.event_id
        ):
            bad_provenance.append(str(letter.event_id))
    poison_ids = {r.event_id for r in history.inputs if r.poison}
    unexpected = sum(1 for d in history.dead_letters if d.event_id not in poison_ids)

    regular = [r for r in history.inputs if not r.poison]
    latencies = {
        r.event_id: first_effect[r.event_id] - r.produced_at
        for r in regular
        if r.event_id in first_effect
    }
    return Verdict(
        inputs=len(regular),
        poison=len(history.inputs) - len(regular),
        lost=lost,
        lost_poison=lost_poison,
        duplicated_effects=sum(c - 1 for c in ends_seen.values() if c > 1),
        reexecutions=sum(c - 1 for c in starts.values() if c > 1),
        reexecution_bound=max_in_flight * sum(f.interrupts for f in history.faults),
        uncommitted={
            p: (history.committed.get(p, 0), end)
            for p, end in history.ends.items()
            if history.committed.get(p, 0) != end
        },
        skipped=skipped,
        bad_provenance=bad_provenance,
        missing_outputs=sum(1 for r in regular if history.outputs.get(r.event_id, 0) == 0),
        unexpected_dead_letters=unexpected,
        latency_p50_s=statistics.median(latencies.values()) if latencies else 0.0,
        recovery_s=recovery(regular, latencies, history.faults),
        handled_rate=_handled_rate(regular, first_effect),
    )


def _handled_rate(regular: list[InputRecord], first_effect: dict[str, float]) -> float:
    """Inputs handled per second, from the first input produced to the last one handled."""
    done = [first_effect[r.event_id] for r in regular if r.event_id in first_effect]
    if not done or not regular:
        return 0.0
    span = max(done) - min(r.produced_at for r in regular)
    return len(done) / span if span > 0 else 0.0


def recovery(
    inputs: Iterable[InputRecord], latencies: Mapping[str, float], faults: list[Fault]
) -> dict[str, float]:
    """Per fault: the longest wait of an input produced from 2 s before it to the next fault."""
    ordered = sorted(faults, key=lambda f: f.at)
    records = list(inputs)
    out: dict[str, float] = {}
    for i, fault in enumerate(ordered):
        until = ordered[i + 1].at if i + 1 < len(ordered) else float("inf")
        window = [
            latencies[r.event_id]
            for r in records
            if fault.at - 2.0 <= r.produced_at < until and r.event_id in latencies
        ]
        out[f"{fault.label}@{i}"] = max(window, default=0.0)
    return out


# --------------------------------------------------------------------------- reading


def read_effects(run_dir: Path) -> dict[str, list[tuple[str, float]]]:
    """Every side-effect log line of a run, by event id."""
    effects: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for path in run_dir.glob("effects-*.log"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                effects[parts[1]].append((parts[0], float(parts[2])))
    return effects


async def read_all(
    bootstrap: str, topic: str, timeout_s: float = 60.0, ends_out: dict[int, int] | None = None
) -> list[object]:
    """Every record of ``topic`` up to its current end (no group, nothing committed).

    ``ends_out`` receives the end offset of each partition.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    parts = [int(p["partition"]) for p in described[0].get("partitions") or []]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        if ends_out is not None:
            ends_out.update({tp.partition: off for tp, off in ends.items()})
        out: list[object] = []
        deadline = time.monotonic() + timeout_s
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


def _header(headers: Iterable[tuple[str, bytes]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode()
    return None


async def collect(
    bootstrap: str, topic: str, output: str, dlq: str, group: str, run_dir: Path
) -> History:
    """Read everything the verifier needs from Kafka and the side-effect logs."""
    inputs = []
    ends: dict[int, int] = {}
    for r in await read_all(bootstrap, topic, ends_out=ends):
        envelope = orjson.loads(r.value)  # type: ignore[attr-defined]
        data = envelope["data"]
        inputs.append(
            InputRecord(
                r.partition,  # type: ignore[attr-defined]
                r.offset,  # type: ignore[attr-defined]
                str(envelope["id"]),
                float(data["t"]),
                bool(data.get("poison")),
            )
        )
    outputs: Counter[str] = Counter()
    for r in await read_all(bootstrap, output):
        outputs[str(orjson.loads(r.value)["data"]["src"])] += 1  # type: ignore[attr-defined]
    dead_letters = []
    for r in await read_all(bootstrap, dlq):
        headers = r.headers  # type: ignore[attr-defined]
        try:
            event_id: str | None = str(orjson.loads(r.value)["id"])  # type: ignore[attr-defined]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            event_id = None
        partition = _header(headers, HEADER_ORIGINAL_PARTITION)
        offset = _header(headers, HEADER_ORIGINAL_OFFSET)
        dead_letters.append(
            DeadLetter(
                event_id,
                _header(headers, HEADER_ORIGINAL_TOPIC),
                int(partition) if partition is not None else None,
                int(offset) if offset is not None else None,
            )
        )
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    committed = {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
    return History(topic, inputs, read_effects(run_dir), outputs, dead_letters, committed, ends)
