"""The chaos verifier finds what it must: loss, skips, duplicates, stale commits, bad provenance."""

from __future__ import annotations

from collections import Counter

from tests.chaos.verify import DeadLetter, Fault, History, InputRecord, judge

TOPIC = "in"


def _history(n: int = 6, poison: frozenset[int] = frozenset({5})) -> History:
    inputs = [InputRecord(0, i, f"e{i}", 100.0 + i, i in poison) for i in range(n)]
    effects: dict[str, list[tuple[str, float]]] = {}
    outputs: Counter[str] = Counter()
    letters = []
    for r in inputs:
        effects[r.event_id] = [("S", r.produced_at + 0.01)]
        if r.poison:
            letters.append(DeadLetter(r.event_id, TOPIC, r.partition, r.offset))
        else:
            effects[r.event_id].append(("E", r.produced_at + 0.02))
            outputs[r.event_id] += 1
    return History(TOPIC, inputs, effects, outputs, letters, {0: n}, {0: n})


def test_a_clean_history_passes() -> None:
    verdict = judge(_history(), max_in_flight=10)
    assert verdict.ok, verdict.problems()
    assert verdict.inputs == 5 and verdict.poison == 1
    assert verdict.duplicated_effects == 0 and verdict.reexecutions == 0
    assert abs(verdict.latency_p50_s - 0.02) < 1e-9


def test_a_lost_input_and_the_skip_over_it_are_found() -> None:
    history = _history()
    history.effects["e2"] = [("S", 102.0)]  # started, never finished
    verdict = judge(history, max_in_flight=10)
    assert verdict.lost == ["e2"] and verdict.skipped == [(0, 2)]
    assert not verdict.ok


def test_an_unhandled_tail_is_lost_but_not_skipped() -> None:
    history = _history(poison=frozenset())
    del history.effects["e5"]
    verdict = judge(history, max_in_flight=10)
    assert verdict.lost == ["e5"] and verdict.skipped == []


def test_duplicates_and_reexecutions_are_counted_against_the_bound() -> None:
    history = _history()
    history.effects["e1"] += [("S", 110.0), ("E", 110.1)]
    history.effects["e3"] += [("S", 111.0)]
    history.faults = [Fault(105.0, "kill -9 instance", interrupts=1)]
    verdict = judge(history, max_in_flight=1)
    assert verdict.duplicated_effects == 1 and verdict.reexecutions == 2
    assert verdict.reexecution_bound == 1 and not verdict.ok
    assert judge(history, max_in_flight=2).ok


def test_commits_short_of_the_end_fail() -> None:
    history = _history()
    history.committed = {0: 4}
    verdict = judge(history, max_in_flight=10)
    assert verdict.uncommitted == {0: (4, 6)} and not verdict.ok


def test_dead_letters_need_their_provenance() -> None:
    history = _history()
    history.dead_letters = [DeadLetter("e5", TOPIC, 0, 4)]  # wrong offset
    verdict = judge(history, max_in_flight=10)
    assert verdict.bad_provenance == ["e5"] and not verdict.ok
    history.dead_letters = []
    verdict = judge(history, max_in_flight=10)
    assert verdict.lost_poison == ["e5"] and not verdict.ok


def test_missing_outputs_fail() -> None:
    history = _history()
    history.outputs["e0"] = 0
    assert judge(history, max_in_flight=10).missing_outputs == 1


def test_recovery_is_the_longest_wait_around_each_fault() -> None:
    history = _history(n=10, poison=frozenset())
    history.effects["e4"] = [("S", 120.0), ("E", 120.0)]  # produced at 104, waited 16 s
    history.faults = [Fault(105.0, "zombie"), Fault(108.5, "stall")]
    verdict = judge(history, max_in_flight=10)
    assert abs(verdict.recovery_s["zombie@0"] - 16.0) < 1e-9
    assert abs(verdict.recovery_s["stall@1"] - 0.02) < 1e-9
