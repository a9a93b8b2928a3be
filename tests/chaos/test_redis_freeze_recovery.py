"""After Redis comes back from a freeze under ``fail_closed``, the flow catches up at once.

Found by ``scripts/chaos.sh`` (scenario ``redis-closed``: a 10 s freeze stalled
handling for about 70 s). While Redis is frozen (SIGSTOP), claim calls time out on
the client, but their commands wait in the socket and Redis runs them when it
continues: the keys then hold claims of this member under tokens the member never
learned. The retried claims must take them back at once instead of waiting for a
copy that does not exist until they expire (``DEDUP_PROCESSING_TTL_MS``, 60 s). The
target: every message handled within 15 s of the end of a 4 s freeze.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import faults as f
from tests.chaos.harness import Infra
from tests.chaos.scenarios import RunConfig, Scenario, run_scenario
from tests.conftest import PrivateRedis

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(180)]


async def test_flow_catches_up_within_15_s_of_a_redis_freeze_under_fail_closed(
    kafka_bootstrap: str, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    pid = int((Path(private_redis.env["INFRA_DIR"]) / "redis" / "redis.pid").read_text())
    infra = Infra(kafka_bootstrap, private_redis.url, 1, None, [pid], None)
    scenario = Scenario(
        "redis-freeze",
        "Redis frozen 4 s under fail_closed",
        [(3, f.redis_stall(4.0))],
        duration_s=9,
        instances=2,
        policy="fail_closed",
    )
    cfg = RunConfig(
        rate=80,
        partitions=4,
        drain_timeout_s=15,
        base_dir=tmp_path,
        # A stalled flow would hold each instance's stop for the 30 s drain timeout.
        extra_env={"TRADESTREAM_RELIABILITY__DRAIN_TIMEOUT_S": "5"},
    )
    result = await run_scenario(scenario, infra, cfg)
    assert result.verdict.inputs > 600
    assert result.drained_s < 15, "not everything handled within 15 s of the feed's end"
    assert max(result.verdict.recovery_s.values()) < 20, result.verdict.recovery_s
    assert result.verdict.ok, result.verdict.problems()
