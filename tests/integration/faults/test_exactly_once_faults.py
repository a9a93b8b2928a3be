"""Exactly-once under faults, on the real Kafka broker: SIGKILL under load, and a zombie.

* The shape of Kafka's ``transactions_test`` (``transactions_chaos.py``): 20,000
  inputs, a copier killed with SIGKILL three times under load and restarted; a
  ``read_committed`` verifier finds every input id exactly once in the output.
  The control run without exactly-once, under the same kills, shows the
  duplicates exactly-once avoids.
* Zombie fencing: a member is frozen (SIGSTOP) with an open transaction past its
  session timeout, another member takes its partitions over, and when the frozen
  one resumes (SIGCONT) its transaction cannot commit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from uuid import uuid4

import orjson
import pytest

from core.config.settings import RedpandaSettings
from core.streaming.topic_reader import read_topic
from tests.integration.faults.transactions_chaos import (
    REPO_ROOT,
    _create_topics,
    _Offsets,
    _preload,
    run_chaos,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

logger = logging.getLogger(__name__)


async def test_sigkilled_copier_loses_nothing_and_duplicates_nothing(kafka_bootstrap: str) -> None:
    eos = await run_chaos(kafka_bootstrap, inputs=20_000, kills=3, guarantee="exactly_once")
    control = await run_chaos(kafka_bootstrap, inputs=20_000, kills=3, guarantee="at_least_once")
    logger.warning("exactly-once: %s", eos.line())
    logger.warning("control: %s", control.line())
    print(eos.line(), control.line(), sep="\n")

    assert len(eos.kill_points) == 3
    assert (eos.unique_outputs, eos.duplicates, eos.missing, eos.strays) == (20_000, 0, 0, 0)
    assert eos.outputs_committed == 20_000
    assert eos.records_written > eos.outputs_committed, "the killed incarnations' work was aborted"
    assert (control.unique_outputs, control.missing, control.strays) == (20_000, 0, 0)
    assert control.duplicates > 0, "the kills landed on uncommitted work"


async def _copier(spec: dict[str, object]) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.faults.eos_copier",
        json.dumps(spec),
        cwd=str(REPO_ROOT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    assert line.strip() == b"ready", f"copier exited with {await process.wait()}"
    return process


async def _until(what: str, timeout_s: float, check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_member_frozen_past_its_session_cannot_commit_when_it_resumes(
    kafka_bootstrap: str,
) -> None:
    prefix = f"zombie-{uuid4().hex[:8]}"
    source, sink, group = f"{prefix}-in", f"{prefix}-out", f"{prefix}-copier"
    partitions, inputs = 2, 200
    await _create_topics(kafka_bootstrap, [source, sink], partitions)
    ids = await _preload(kafka_bootstrap, source, inputs)
    spec: dict[str, object] = {
        "bootstrap": kafka_bootstrap,
        "source": source,
        "sink": sink,
        "group": group,
        "guarantee": "exactly_once",
        "commit_interval_ms": 25_000,  # the zombie's transaction stays open
    }
    zombie = await _copier(spec)
    heir: asyncio.subprocess.Process | None = None
    try:
        async with _Offsets(kafka_bootstrap, group) as offsets:
            # The zombie has copied everything into its open transactions, uncommitted.
            await _until(
                "the zombie's outputs",
                30,
                lambda: _at_least(offsets.ends(sink, partitions), inputs),
            )
            assert await offsets.committed(source, partitions) == 0
            zombie.send_signal(signal.SIGSTOP)
            frozen_at = time.monotonic()

            heir = await _copier({**spec, "commit_interval_ms": 500})
            await _until(
                "the heir to commit the input",
                60,
                lambda: _at_least(offsets.committed(source, partitions), inputs),
            )
            assert time.monotonic() - frozen_at > 3.0, "the zombie outlived its session timeout"

            zombie.send_signal(signal.SIGCONT)
            # Resumed, the zombie learns of the rebalance and commits what it holds on
            # revocation; at stop it tries again. Both must be refused.
            zombie.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(zombie.communicate(), 60)
            committed_after = await offsets.committed(source, partitions)
    finally:
        for process in (zombie, heir):
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
                await process.wait()
    config = RedpandaSettings(bootstrap_servers=kafka_bootstrap)
    committed = await read_topic(config, sink, isolation_level="read_committed", timeout_s=60)
    written = await read_topic(config, sink, isolation_level="read_uncommitted", timeout_s=60)
    copies = Counter(orjson.loads(r.value or b"{}")["data"]["src"] for r in committed)
    log = err.decode(errors="replace")

    assert set(copies) == set(ids) and max(copies.values()) == 1, "the heir's copies, once each"
    assert len(written) >= 2 * inputs, "the zombie did write its copies before it froze"
    assert committed_after == inputs
    assert "was fenced (a newer owner took the partition over" in log, log[-3000:]


async def _at_least(value: Awaitable[int], wanted: int) -> bool:
    return await value >= wanted
