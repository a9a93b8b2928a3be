"""MetricsCollector: counters after a known mix of outcomes, exposition, isolation."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from core.streaming.reliability.metrics_collector import DURATION_BUCKETS, MetricsCollector


def samples(collector: MetricsCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    parsed = text_string_to_metric_families(collector.exposition().decode())
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parsed
        for s in family.samples
    }


async def record_known_mix(m: MetricsCollector) -> None:
    m.record_consumed("orders", 5)
    m.record_consumed("ticks", 2, consumer_group="other")
    m.record_handled("orders", 0.002)
    m.record_handled("orders", 0.004)
    await m.record_success(0.5, topic="ticks")
    m.record_duplicate("orders")
    m.record_retry("orders", "TimeoutError")
    m.record_retry("orders", "TimeoutError")
    m.record_retry("orders", "ConnectionError")
    m.record_dead_letter("orders", "ValueError")
    m.record_decode_failure("orders")
    m.record_error("orders", "ValueError")
    await m.record_failure(KeyError("x"), topic="orders")
    await m.record_failure("something broke")
    m.record_commit()
    m.record_commit(3)
    m.record_dedup_unavailable()
    m.record_dedup_unavailable(2)
    m.record_loop_restart()
    m.set_in_flight(7)
    m.set_in_flight(4)
    m.set_lag("orders", 0, 10)
    m.set_lag("orders", 1, 5)
    m.set_lag("orders", 1, 3)


async def test_snapshot_after_known_mix() -> None:
    m = MetricsCollector("svc", consumer_group="g1")
    await record_known_mix(m)
    assert m.snapshot() == {
        "consumed": 7,
        "handled": 3,
        "duplicates": 1,
        "retries": 3,
        "dead_lettered": 1,
        "decode_failures": 1,
        "failures": 3,
        "commits": 4,
        "dedup_unavailable": 3,
        "loop_restarts": 1,
        "in_flight": 4,
        "lag": 13,
    }


async def test_exposition_parses_with_expected_labels() -> None:
    m = MetricsCollector("svc", consumer_group="g1")
    await record_known_mix(m)
    got = samples(m)
    flow = (("consumer_group", "g1"), ("service", "svc"), ("topic", "orders"))
    assert got[("tradestream_messages_consumed_total", flow)] == 5
    other = (("consumer_group", "other"), ("service", "svc"), ("topic", "ticks"))
    assert got[("tradestream_messages_consumed_total", other)] == 2
    timeout = tuple(sorted((*flow, ("error_type", "TimeoutError"))))
    assert got[("tradestream_retries_total", timeout)] == 2
    key_error = tuple(sorted((*flow, ("error_type", "KeyError"))))
    assert got[("tradestream_failures_total", key_error)] == 1
    unknown = (
        ("consumer_group", "g1"),
        ("error_type", "error"),
        ("service", "svc"),
        ("topic", "unknown"),
    )
    assert got[("tradestream_failures_total", unknown)] == 1
    lag = (("consumer_group", "g1"), ("partition", "1"), ("service", "svc"), ("topic", "orders"))
    assert got[("tradestream_consumer_lag", lag)] == 3
    assert got[("tradestream_handler_duration_seconds_count", flow)] == 2
    assert abs(got[("tradestream_handler_duration_seconds_sum", flow)] - 0.006) < 1e-9
    group = (("consumer_group", "g1"), ("service", "svc"))
    assert got[("tradestream_commits_total", group)] == 4
    assert got[("tradestream_in_flight_messages", group)] == 4
    names = {name for name, _ in got}
    for expected in (
        "tradestream_messages_handled_total",
        "tradestream_duplicates_skipped_total",
        "tradestream_dead_lettered_total",
        "tradestream_decode_failures_total",
        "tradestream_dedup_unavailable_total",
        "tradestream_loop_restarts_total",
    ):
        assert expected in names


def test_label_names_are_bounded() -> None:
    m = MetricsCollector("svc")
    m.record_consumed("orders")
    m.record_retry("orders", "X" * 500)
    m.set_lag("orders", 2, 1)
    allowed = {"service", "topic", "consumer_group", "error_type", "partition", "le"}
    for (_, labels), _value in samples(m).items():
        assert {k for k, _ in labels} <= allowed
        for key, value in labels:
            if key == "error_type":
                assert len(value) <= 100


def test_each_collector_has_its_own_registry() -> None:
    a = MetricsCollector("svc")
    b = MetricsCollector("svc")  # same names, no clash
    a.record_consumed("t")
    assert a.registry is not b.registry
    assert a.snapshot()["consumed"] == 1
    assert b.snapshot()["consumed"] == 0
    shared = CollectorRegistry()
    c = MetricsCollector("svc-c", registry=shared)
    assert c.registry is shared


def test_clear_lag_forgets_a_partition() -> None:
    m = MetricsCollector("svc")
    m.set_lag("orders", 0, 10)
    m.set_lag("orders", 1, 5)
    m.clear_lag("orders", 0)
    m.clear_lag("orders", 7)  # never set: no error
    assert m.snapshot()["lag"] == 5
    m.set_lag("orders", 0, 1)
    assert m.snapshot()["lag"] == 6


def test_default_group_label() -> None:
    m = MetricsCollector("svc")
    m.record_commit()
    assert (
        "tradestream_commits_total",
        (("consumer_group", "default"), ("service", "svc")),
    ) in samples(m)


def test_a_run_of_durations_lands_in_the_same_buckets_as_one_by_one() -> None:
    edges = [b for bound in DURATION_BUCKETS for b in (bound * 0.999, bound, bound * 1.001)]
    durations = [0.0, *edges, 100.0, 0.00001, 0.3, 0.3]
    one_by_one, per_run = MetricsCollector("a"), MetricsCollector("b")
    singles, run = one_by_one.durations("t", "g"), per_run.durations("t", "g")
    for seconds in durations:
        singles.observe(seconds)
    run.observe_many(durations[:10])
    run.observe_many(durations[10:])
    run.observe_many([])
    assert run.buckets == singles.buckets
    assert run.count == singles.count == len(durations)
    assert abs(run.total - singles.total) < 1e-9
