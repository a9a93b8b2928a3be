"""After kill -9 of an instance, its messages are handled again well before the claim lifetime.

The killed instance had claimed (in Redis, for ``DEDUP_PROCESSING_TTL_MS``, 60 s
by default) every message it had fetched, started or not. The member that takes
its partitions over must take those claims over (they belong to an older group
generation of the partition) instead of waiting for them to expire: every
message handled within 30 s of the kill, not after session timeout + 60 s.

To have fetched-but-unfinished messages at the kill, a burst of 480 events
meets a 50 ms handler with one lane per partition (40 msg/s for the group), and
one of the two instances is killed 3 s in, with about 10 s of backlog left.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import faults as f
from tests.chaos.harness import Infra
from tests.chaos.scenarios import RunConfig, Scenario, run_scenario
from tests.conftest import PrivateRedis

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(180)]


async def test_backlog_of_a_killed_instance_is_handled_within_30_s(
    kafka_bootstrap: str, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    infra = Infra(kafka_bootstrap, private_redis.url, 1)
    scenario = Scenario(
        "kill-recovery",
        "kill -9 of one of two instances with a backlog",
        [(3, f.kill_instance(1.0))],
        duration_s=1.2,
        instances=2,
    )
    cfg = RunConfig(
        rate=400,
        partitions=4,
        handler_ms=50,
        ordering="partition",
        concurrency=1,
        drain_timeout_s=30,
        base_dir=tmp_path,
    )
    result = await run_scenario(scenario, infra, cfg)
    verdict = result.verdict
    assert verdict.inputs > 400
    assert result.drained_s < 30, "not everything handled within 30 s of the feed's end"
    assert verdict.ok, verdict.problems()
