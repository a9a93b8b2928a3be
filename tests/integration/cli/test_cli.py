"""The command line: demo, run failures, topics ensure, and dead-letter replay on real Kafka."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from services.cli.main import app
from tests.conftest import KafkaAdmin
from tests.integration.orchestration.helpers import (
    end_offsets,
    kafka_settings,
    produce,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[3]
runner = CliRunner()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADESTREAM_")}
    env.update(extra)
    return env


def test_demo_runs_every_stage_and_exits_zero() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "demo", "--duration", "5", "--no-live"],
        cwd=ROOT,
        env=_env(COLUMNS="120"),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "summary" in out
    for label in (
        "market ticks",
        "raw signals",
        "validated signals",
        "rejected signals",
        "orders placed",
        "orders filled",
        "duplicates skipped",
        "retries",
        "dead letters",
    ):
        match = re.search(rf"{label}\s*│\s*([\d,]+)", out)
        assert match, f"{label} missing from summary:\n{out}"
        assert int(match.group(1).replace(",", "")) > 0, f"{label} saw no events:\n{out}"
    for panel in ("latency (recent)", "positions (unrealized at the last tick)"):
        assert panel in out, f"{panel} missing from summary:\n{out}"
    assert re.search(r"tick -> signal\s*│\s*[\d.,]+ ms", out), out
    assert "fault injection on: " in out and "garbage bytes" in out
    assert re.search(r"memory: RSS \d+ MB", out), out


def test_run_with_unreachable_kafka_fails_clearly() -> None:
    env = _env(
        TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS="127.0.0.1:1",
        TRADESTREAM_REDPANDA__CONNECT_TIMEOUT_S="2",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "run", "signal_validator"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "Kafka not reachable at 127.0.0.1:1 after 2 s" in proc.stderr


def test_bad_settings_exit_two_naming_the_variable() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "topics", "ensure"],
        cwd=ROOT,
        env=_env(TRADESTREAM_REDPANDA__SECURITY_PROTOCOL="CARRIER_PIGEON"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "TRADESTREAM_REDPANDA__SECURITY_PROTOCOL" in proc.stderr


@pytest.mark.kafka
async def test_topics_ensure_creates_then_reports_existing(
    kafka_bootstrap: str,
    kafka_admin: KafkaAdmin,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("TRADESTREAM_BROKER_NAMESPACE", unique_name)
    env = {"COLUMNS": "200"}
    first = await asyncio.to_thread(
        runner.invoke, app, ["topics", "ensure", "--partitions", "2"], env=env
    )
    assert first.exit_code == 0, first.output
    assert f"{unique_name}.signals.validated" in first.output and "created" in first.output
    assert f"{unique_name}.ledger.snapshots" in first.output
    second = await asyncio.to_thread(runner.invoke, app, ["topics", "ensure"], env=env)
    assert second.exit_code == 0 and "created" not in second.output

    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    configs: dict[str, dict[str, str]] = {}
    for name in (f"{unique_name}.executions", f"{unique_name}.ledger.snapshots"):
        [response] = await kafka_admin.client.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name)]
        )
        [resource] = response.resources
        configs[name] = {entry[0]: entry[1] for entry in resource[4]}
    assert configs[f"{unique_name}.executions"]["retention.ms"] == "-1"  # the ledger is kept
    assert configs[f"{unique_name}.ledger.snapshots"]["cleanup.policy"] == "compact"


@pytest.mark.kafka
async def test_dlq_list_show_dry_run_and_replay_of_a_fixed_message(
    kafka_bootstrap: str,
    kafka_admin: KafkaAdmin,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=1)
    broken = True
    handled: list[int] = []

    async def handle(event: dict[str, Any]) -> None:
        if broken and event["data"]["n"] == 2:
            raise ValueError("cannot handle two yet")
        handled.append(event["data"]["n"])

    service = (
        StreamServiceBuilder("dlq-cli", settings=kafka_settings(kafka_bootstrap))
        .add_consumer_handler([topic], f"{unique_name}-g", handle)
        .build()
    )
    await service.start()
    try:
        await produce(kafka_bootstrap, topic, [(None, {"n": i}) for i in range(4)])
        await wait_until(lambda: service.flows[0].layer.outcomes["dead_lettered"] == 1, 30, "dlq")
        monkeypatch.setenv("TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS", kafka_bootstrap)
        dlq = f"{topic}.dlq"
        env = {"COLUMNS": "200"}
        listed = await asyncio.to_thread(runner.invoke, app, ["dlq", "list", dlq], env=env)
        assert listed.exit_code == 0 and "ValueError" in listed.output
        assert f"{topic}[0]@2" in listed.output
        position = re.search(r"│ (\d+:\d+) ", listed.output)
        assert position, listed.output
        pos = position.group(1)
        shown = await asyncio.to_thread(runner.invoke, app, ["dlq", "show", dlq, pos], env=env)
        assert shown.exit_code == 0
        assert "cannot handle two yet" in shown.output and '"n": 2' in shown.output

        dry = await asyncio.to_thread(
            runner.invoke, app, ["dlq", "replay", dlq, "--all", "--dry-run"], env=env
        )
        assert dry.exit_code == 0 and "nothing sent" in dry.output
        # A replay is acknowledged before the command returns: nothing was appended.
        assert await end_offsets(kafka_bootstrap, topic, 1) == {0: 4}

        declined = await asyncio.to_thread(
            runner.invoke, app, ["dlq", "replay", dlq, "-p", pos], input="n\n", env=env
        )
        assert declined.exit_code == 1
        broken = False  # the fix is deployed
        replay = await asyncio.to_thread(
            runner.invoke, app, ["dlq", "replay", dlq, "-p", pos, "--yes"], env=env
        )
        assert replay.exit_code == 0, replay.output
        await wait_until(lambda: sorted(handled) == [0, 1, 2, 3], 30, "the replayed message")
    finally:
        await service.stop()


async def test_demo_serves_one_ops_endpoint_for_the_whole_pipeline() -> None:
    import socket

    import aiohttp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = _env(
        TRADESTREAM_OBSERVABILITY__HTTP_ENABLED="true",
        TRADESTREAM_OBSERVABILITY__HTTP_PORT=str(port),
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli.main",
        "demo",
        "--duration",
        "8",
        "--no-live",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    ready: dict[str, Any] = {}
    metrics = ""
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health/ready") as response:
                        if response.status == 200:
                            ready = await response.json()
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                metrics = await response.text()
    finally:
        code = await asyncio.wait_for(proc.wait(), 60)
    assert code == 0
    assert set(ready["services"]) == {
        "market_data",
        "strategy_runner",
        "signal_validator",
        "trading_engine",
    }
    from prometheus_client.parser import text_string_to_metric_families

    handled: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics):
        if family.name == "tradestream_messages_handled":
            for sample in family.samples:
                service = sample.labels["service"]
                handled[service] = handled.get(service, 0.0) + sample.value
    assert handled.keys() == {"strategy_runner", "signal_validator", "trading_engine"}
    assert all(count > 0 for count in handled.values()), handled
