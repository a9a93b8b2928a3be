"""A short chaos run inside the test command (`bash scripts/chaos.sh` is the long one).

Two workload processes on the test broker and a private redis-server, fed at
80 msg/s for 24 s (one lane per partition, a 20 ms handler, so each process has
fetched and claimed messages waiting), with one ``kill -9`` of an instance and
a 5 s Redis freeze under ``fail_open`` (under ``fail_closed`` a freeze
currently stalls the flow for the claim lifetime afterwards:
``test_redis_freeze_recovery.py``). The verifier then reads the topics and
side-effect logs: nothing lost, no offset skipped, committed offsets at the end,
every poison event dead-lettered with its provenance, re-executions within the
in-flight bound. The killed instance's messages must run again within 30 s,
well before its claims would expire (60 s): the new owner takes them over.
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
        "smoke: kill -9 of an instance, Redis frozen 5 s (fail_open)",
        [(6, f.kill_instance(2.0)), (14, f.redis_stall(5.0))],
        duration_s=24,
        instances=2,
        policy="fail_open",
    )
    cfg = RunConfig(
        rate=80,
        partitions=4,
        handler_ms=20,
        ordering="partition",
        concurrency=1,
        max_in_flight=100,
        poison_every=50,
        drain_timeout_s=30,
        base_dir=Path(str(tmp_path)),
    )
    result = await run_scenario(scenario, infra, cfg)
    verdict = result.verdict
    print(table([result], cfg.rate))
    assert [fault.split(" ")[0] for fault in result.faults] == ["kill", "Redis"]
    assert verdict.inputs > 1500 and verdict.poison > 20
    assert verdict.ok, verdict.problems()
    assert result.drained_s < 30
    assert verdict.reexecutions <= verdict.reexecution_bound == 100
    kill_wait = next(v for k, v in verdict.recovery_s.items() if k.startswith("kill"))
    assert kill_wait < 30, verdict.recovery_s
