"""A short chaos run inside the test command (`bash scripts/chaos.sh` is the long one).

Two workload processes on the test broker and a private redis-server, fed at
80 msg/s for 24 s, with one ``kill -9`` of an instance and a 5 s Redis freeze
under ``fail_closed``. The verifier then reads the topics and side-effect logs:
nothing lost, no offset skipped, committed offsets at the end, every poison
event dead-lettered with its provenance, re-executions within the in-flight
bound. The claim lifetime is cut to 10 s to keep the run short (a killed
worker's claims otherwise hold its messages for the default 60 s).
"""

from __future__ import annotations

import pytest

from tests.chaos import faults as f
from tests.chaos.harness import Infra
from tests.chaos.run import table
from tests.chaos.scenarios import RunConfig, Scenario, run_scenario
from tests.conftest import PrivateRedis

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(240)]


async def test_chaos_smoke(
    kafka_bootstrap: str, private_redis: PrivateRedis, tmp_path: object
) -> None:
    from pathlib import Path

    pid = int((Path(private_redis.env["INFRA_DIR"]) / "redis" / "redis.pid").read_text())
    infra = Infra(kafka_bootstrap, private_redis.url, 1, None, [pid], None)
    scenario = Scenario(
        "smoke",
        "smoke: kill -9 of an instance, Redis frozen 5 s (fail_closed)",
        [(6, f.kill_instance(2.0)), (14, f.redis_stall(5.0))],
        duration_s=24,
        instances=2,
        policy="fail_closed",
    )
    cfg = RunConfig(
        rate=80,
        partitions=4,
        max_in_flight=100,
        poison_every=50,
        drain_timeout_s=60,
        base_dir=Path(str(tmp_path)),
        extra_env={"TRADESTREAM_RELIABILITY__DEDUP_PROCESSING_TTL_MS": "10000"},
    )
    result = await run_scenario(scenario, infra, cfg)
    verdict = result.verdict
    print(table([result], cfg.rate))
    assert [fault.split(" ")[0] for fault in result.faults] == ["kill", "Redis"]
    assert verdict.inputs > 1500 and verdict.poison > 20
    assert verdict.ok, verdict.problems()
    assert result.drained_s < 60
    assert verdict.reexecutions <= verdict.reexecution_bound == 100
