"""The trading engine survives kill -9 under load: real Kafka, real Redis, its own process.

A private Kafka broker and redis-server of this test (the shared ones keep their
``market.ticks`` clean). The feed, strategy runner and validator run in this
process; the engine runs as
``tradestream run trading_engine`` in a child process, which is killed with
SIGKILL ``ROUNDS`` times (3 by default) while signals flow, restarted each time,
and finally stopped with SIGTERM. Checked:

* after each restart, the books the engine rebuilt (its ``book restored`` log
  line) equal the books computed here, independently, from the ``executions``
  topic up to the offsets the engine read (the engine writes a ledger snapshot
  every 200 events, so it restarts from a snapshot and the events after it);
* no client order id is placed twice; no order fills twice;
* every validated signal ends in exactly one outcome: one order outcome on each
  namespace it is routed to, or one rejection by the engine;
* no MARKET order is rejected for want of a price after a restart;
* the final books logged at SIGTERM equal the independent fold of the whole ledger.

The figures (restart time, how long until the restarted engine trades again) are
printed; ``TRADESTREAM_KILL_REPORT=<file>`` also writes them as JSON. The rounds,
the load and the dedup claim lifetime are set by ``TRADESTREAM_KILL_*`` variables
(``scripts/kill_engine.sh`` runs a longer variant).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from pydantic import SecretStr

from core.config.settings import RedisSettings, RedpandaSettings, Settings, TradingSettings
from core.schemas.topics import TopicMap
from core.streaming.topic_reader import read_topics, scan_topics
from core.streaming.types import FetchedRecord
from services.registry import build_service
from services.trading_engine.orders import client_order_id
from tests.conftest import PrivateKafka, PrivateRedis

ROUNDS = int(os.environ.get("TRADESTREAM_KILL_ROUNDS", "3"))
LIFETIME_S = float(os.environ.get("TRADESTREAM_KILL_LIFETIME_S", "5"))
TICK_RATE = float(os.environ.get("TRADESTREAM_KILL_TICK_RATE", "100"))
CLAIM_TTL_MS = os.environ.get("TRADESTREAM_KILL_CLAIM_TTL_MS", "5000")
SNAPSHOT_EVERY = os.environ.get("TRADESTREAM_KILL_SNAPSHOT_EVERY", "200")
ROOT = Path(__file__).resolve().parents[3]

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.redis,
    pytest.mark.timeout(int(os.environ.get("TRADESTREAM_KILL_TIMEOUT_S", "300"))),
]


# --------------------------------------------------------------------------- independent books


def fold_fills(records: list[FetchedRecord]) -> dict[str, dict[str, Any]]:
    """Books from fill events alone, written here apart from the engine's code."""
    fills = []
    for record in records:
        envelope = json.loads(record.value or b"{}")
        if envelope.get("type") == "order.filled":
            fills.append(envelope["data"])
    fills.sort(key=lambda f: f["sequence"])
    books: dict[str, dict[str, Any]] = {}
    for fill in fills:
        book = books.setdefault(fill["strategy_id"], {"cash": 1e7, "realized": 0.0, "pos": {}})
        qty = fill["quantity"] if fill["action"] == "BUY" else -fill["quantity"]
        price = fill["fill_price"]
        book["cash"] -= qty * price
        held, avg = book["pos"].get(fill["instrument_token"], (0, 0.0))
        if held == 0 or (held > 0) == (qty > 0):
            avg = (avg * abs(held) + price * abs(qty)) / abs(held + qty)
        else:
            closed = min(abs(held), abs(qty))
            book["realized"] += closed * (price - avg) * (1 if held > 0 else -1)
            if held + qty == 0:
                avg = 0.0
            elif (held + qty > 0) != (held > 0):
                avg = price
        book["pos"][fill["instrument_token"]] = (held + qty, avg)
    return books


def assert_same_books(logged: dict[str, Any], independent: dict[str, dict[str, Any]]) -> None:
    assert set(logged) == set(independent)
    for strategy, book in independent.items():
        mine = logged[strategy]
        assert mine["cash"] == pytest.approx(book["cash"], rel=1e-9, abs=1e-6), strategy
        assert mine["realized"] == pytest.approx(book["realized"], rel=1e-9, abs=1e-6), strategy
        held = {str(t): q for t, (q, _) in book["pos"].items() if q}
        assert {t: p[0] for t, p in mine["positions"].items() if p[0]} == held, strategy
        for token, (qty, avg) in book["pos"].items():
            if qty:
                assert mine["positions"][str(token)][1] == pytest.approx(avg, rel=1e-9)


# --------------------------------------------------------------------------- the engine process


class EngineProcess:
    """``tradestream run trading_engine`` with JSON logs in a file of its own."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.started = time.monotonic()
        self._handle = log.open("wb")
        self.proc = asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli.main",
            "run",
            "trading_engine",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=self._handle,
        )

    async def start(self) -> EngineProcess:
        self.process = await self.proc
        return self

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
        return out

    async def wait_for(
        self, event: str, count: int, timeout_s: float = 60.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = [line for line in self.lines() if line.get("event") == event]
            if len(found) >= count:
                return found
            if self.process.returncode is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"engine never logged {event!r}:\n{tail}")
            await asyncio.sleep(0.1)

    async def kill(self) -> None:
        if self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        self._handle.close()

    async def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), 60)
        self._handle.close()
        return code


# --------------------------------------------------------------------------- the test


async def test_engine_killed_three_times_under_load_keeps_books_and_outcomes(
    private_kafka: PrivateKafka, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    kafka_bootstrap, redis_url = private_kafka.bootstrap, private_redis.url
    run = uuid4().hex[:8]
    ns, shadow = f"k9-{run}", f"k9-{run}-shadow"
    routes = {"momentum": [ns, shadow]}
    settings = Settings(
        broker_namespace=ns,
        redpanda=RedpandaSettings(bootstrap_servers=kafka_bootstrap, group_id_prefix=f"k9-{run}"),
        redis=RedisSettings(url=SecretStr(redis_url)),
        trading=TradingSettings(market_always_open=True, strategy_routes=routes),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADESTREAM_")}
    env.update(
        {
            "TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS": kafka_bootstrap,
            "TRADESTREAM_REDPANDA__GROUP_ID_PREFIX": f"k9-{run}",
            "TRADESTREAM_REDIS__URL": redis_url,
            "TRADESTREAM_BROKER_NAMESPACE": ns,
            "TRADESTREAM_TRADING__MARKET_ALWAYS_OPEN": "true",
            "TRADESTREAM_TRADING__STRATEGY_ROUTES": json.dumps(routes),
            "TRADESTREAM_OBSERVABILITY__LOG_FORMAT": "json",
            "TRADESTREAM_SERVICES__trading_engine__dedup_processing_ttl_ms": CLAIM_TTL_MS,
            "TRADESTREAM_TRADING__SNAPSHOT_EVERY": SNAPSHOT_EVERY,
        }
    )
    namespaces = (ns, shadow)
    ledger = [t for n in namespaces for t in (TopicMap(n).orders(), TopicMap(n).executions())]
    config = settings.redpanda

    validator = build_service("signal_validator", settings)
    runner = build_service("strategy_runner", settings)
    feed = build_service("market_data", settings, tick_rate=TICK_RATE, seed=7)
    engine = await EngineProcess(env, tmp_path / "engine-0.log").start()
    engine_records = (await engine.wait_for("book restored", 2))[0]["ledger_size"]
    for service in (validator, runner, feed):
        await service.start()
    figures: list[dict[str, Any]] = []
    try:
        for round_ in range(1, ROUNDS + 1):
            await trading_again(config, ledger, engine_records, timeout_s=90)
            await asyncio.sleep(LIFETIME_S)  # under load: orders flowing when it dies
            await engine.kill()
            engine = await EngineProcess(env, tmp_path / f"engine-{round_}.log").start()
            restored = await engine.wait_for("book restored", 2)
            restart_s = time.monotonic() - engine.started
            engine_records = restored[0]["ledger_size"]
            records = await read_topics(config, ledger)
            for line in restored:
                ends = line["ends"]
                executions = TopicMap(line["namespace"]).executions()
                upto = [
                    r
                    for r in records
                    if r.topic == executions and r.offset < ends[f"{r.topic}[{r.partition}]"]
                ]
                assert sum(book["fills"] for book in line["books"].values()) == sum(
                    1 for r in upto if json.loads(r.value or b"{}")["type"] == "order.filled"
                )
                assert_same_books(line["books"], fold_fills(upto))
            figures.append(
                {
                    "round": round_,
                    "restart_s": round(restart_s, 2),
                    "restore_s": restored[0]["seconds"],
                    "ledger_size": restored[0]["ledger_size"],
                    "ledger_records_read": restored[0]["ledger_records_read"],
                    "sequence": {line["namespace"]: line["sequence"] for line in restored},
                    "from_snapshot": all(line["snapshot"] for line in restored),
                    "restored_at": datetime.fromisoformat(restored[0]["timestamp"]).timestamp(),
                }
            )
        await trading_again(config, ledger, engine_records, timeout_s=90)
        await asyncio.sleep(LIFETIME_S)
        await feed.stop()
        outcome = await wait_for_outcomes(config, ns, namespaces, timeout_s=120)
    except BaseException:
        await engine.kill()  # a failed run leaves no engine process behind
        raise
    finally:
        for service in (feed, runner, validator):
            await service.stop()
    assert await engine.terminate() == 0
    finals = await engine.wait_for("final book", 1)

    # ----------------------------------------------------------------- the ledger, whole
    records = await read_topics(config, ledger)
    placed = Counter()
    fills = Counter()
    no_price_after_restart = []
    first_after: dict[int, float] = {}
    for record in records:
        envelope = json.loads(record.value or b"{}")
        data = envelope["data"]
        if envelope["type"] == "order.placed":
            placed[data["client_order_id"]] += 1
        if envelope["type"] == "order.filled":
            fills[data["client_order_id"]] += 1
        if envelope["type"] == "order.rejected" and data["reason"].startswith("no price"):
            no_price_after_restart.append(data)
        for fig in figures:
            if (data.get("sequence") or 0) > fig["sequence"].get(data["namespace"], 1 << 62):
                at = record.timestamp / 1000
                first_after[fig["round"]] = min(first_after.get(fig["round"], at), at)
    assert placed and max(placed.values()) == 1, "a client order id was placed twice"
    assert max(fills.values()) == 1, "an order filled twice"
    assert no_price_after_restart == []
    assert any(fig["from_snapshot"] for fig in figures), "no restart used a snapshot"
    for namespace in namespaces:
        books = [f for f in finals if f["namespace"] == namespace]
        executions = [r for r in records if r.topic == TopicMap(namespace).executions()]
        independent = fold_fills(executions)
        assert {b["strategy"] for b in books} == set(independent)
        for book in books:
            mine = independent[book["strategy"]]
            assert book["cash"] == pytest.approx(mine["cash"], abs=0.01)
            assert book["realized_pnl"] == pytest.approx(mine["realized"], abs=0.01)

    for fig in figures:
        fig["trading_again_after_s"] = round(
            first_after.get(fig["round"], 0) - fig["restored_at"], 2
        )
        del fig["restored_at"]
    summary = {"rounds": figures, **outcome, "orders_placed": sum(placed.values())}
    print("kill -9 figures:", json.dumps(summary))
    report = os.environ.get("TRADESTREAM_KILL_REPORT")
    if report:
        await asyncio.to_thread(Path(report).write_text, json.dumps(summary, indent=2))


async def trading_again(
    config: RedpandaSettings, ledger: list[str], restored_records: int, timeout_s: float
) -> None:
    """Wait until the ledger grew past what the engine restored from: it trades again."""
    deadline = time.monotonic() + timeout_s
    while True:
        ends = await scan_topics(config, ledger, lambda batch: None, tail=0)
        if sum(ends.ends.values()) > restored_records:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the engine did not trade again within {timeout_s:g} s")
        await asyncio.sleep(0.5)


async def wait_for_outcomes(
    config: RedpandaSettings, ns: str, namespaces: tuple[str, ...], timeout_s: float
) -> dict[str, int]:
    """Wait until every validated signal has its outcomes; assert there is exactly one each."""
    topics = TopicMap(ns)
    deadline = time.monotonic() + timeout_s
    while True:
        records = await read_topics(
            config,
            [
                topics.signals_validated(),
                topics.signals_rejected(),
                *(TopicMap(n).orders() for n in namespaces),
                *(TopicMap(n).executions() for n in namespaces),
            ],
        )
        validated: dict[str, dict[str, Any]] = {}
        rejected: Counter[str] = Counter()
        initial: dict[str, Counter[str]] = defaultdict(Counter)
        for record in records:
            envelope = json.loads(record.value or b"{}")
            data = envelope["data"]
            kind = envelope["type"]
            if kind == "signal.validated":
                signal = data["original_signal"]
                validated[signal["signal_id"]] = signal
            elif kind == "signal.rejected" and data["stage"] == "trading_engine":
                rejected[data["signal_id"]] += 1
            elif kind in ("order.placed", "order.rejected"):
                initial[data["client_order_id"]][kind] += 1
        missing = []
        for signal_id, signal in validated.items():
            if rejected[signal_id]:
                continue
            targets = namespaces if signal["strategy_id"] == "momentum" else (ns,)
            for target in targets:
                if not initial.get(client_order_id(signal_id, target)):
                    missing.append((signal_id, target))
        if not missing:
            break
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(missing)} validated signal(s) without an outcome: {missing[:5]}"
            )
        await asyncio.sleep(1.0)
    assert validated, "no signal was validated"
    for signal_id, signal in validated.items():
        targets = namespaces if signal["strategy_id"] == "momentum" else (ns,)
        outcomes = [sum(initial[client_order_id(signal_id, t)].values()) for t in targets]
        if rejected[signal_id]:
            assert rejected[signal_id] == 1 and sum(outcomes) == 0, signal_id
        else:
            assert outcomes == [1] * len(targets), (signal_id, outcomes)
    return {"validated_signals": len(validated), "engine_rejections": sum(rejected.values())}
