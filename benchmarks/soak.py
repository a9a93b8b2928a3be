"""Soak the trading pipeline at a steady rate and watch each process's resident memory.

Two modes, each a bounded run that stops by itself:

* ``demo``: ``tradestream demo --no-live`` (all four services in one process, on
  the embedded broker and dedup store) for ``--minutes`` at ``--rate`` ticks/s;
* ``services``: the four services as separate ``tradestream run`` processes on
  the Kafka broker and Redis given (``--bootstrap``, ``--redis``), each in a
  fresh namespace, the feed at ``--rate`` ticks/s, then SIGTERM to each.

RSS (``/proc/<pid>/statm``) is sampled every ``--every`` seconds. After the
warm-up (``--warmup-minutes``, default a third of the run: caches, retention and
dedup TTLs fill up), growth is the mean RSS of the last two minutes against the
mean of the first minute after warm-up. The run fails (exit 1) when a process
grows by ``--max-growth`` (5%) or more, or exits early. ``scripts/soak.sh``
starts the servers for the ``services`` mode.

Each process serves ``/metrics`` on a free port; at the end the latency
histograms (tick -> signal, signal -> order, order -> fill) are read from it and
their p50 and p99 estimated from the buckets (linear within a bucket).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * PAGE / 2**20
    except (OSError, ValueError, IndexError):
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The ``q`` quantile from cumulative (upper bound, count) buckets, linear inside one."""
    total = buckets[-1][1]
    if total <= 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 0.0)
        lower, below = bound, count
    return lower


def latencies(port: int) -> dict[str, dict[str, float]]:
    """p50, p99 and count of every ``tradestream_trading_*_seconds`` histogram on ``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram" or not family.name.startswith("tradestream_trading_"):
            continue
        buckets = sorted(
            (float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")
        )
        if buckets and buckets[-1][1] > 0:
            out[family.name] = {
                "p50_ms": round(quantile(buckets, 0.5) * 1000, 2),
                "p99_ms": round(quantile(buckets, 0.99) * 1000, 2),
                "count": buckets[-1][1],
            }
    return out


@dataclass
class Watched:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    samples: list[tuple[float, float]] = field(default_factory=list)

    def sample(self, at: float) -> None:
        value = rss_mb(self.proc.pid)
        if value is not None:
            self.samples.append((round(at, 1), round(value, 1)))

    def verdict(self, warmup_s: float, end_s: float, max_growth: float) -> dict[str, object]:
        """Growth of RSS after the warm-up, and whether it stays under ``max_growth``."""
        after = [v for t, v in self.samples if warmup_s <= t < warmup_s + 60]
        last = [v for t, v in self.samples if t >= end_s - 120]
        if not after or not last:
            return {"name": self.name, "ok": False, "why": "not enough samples"}
        base, tail = statistics.mean(after), statistics.mean(last)
        growth = (tail - base) / base
        window_h = max((end_s - 60 - warmup_s) / 3600, 1e-9)
        return {
            "name": self.name,
            "rss_start_mb": self.samples[0][1],
            "rss_after_warmup_mb": round(base, 1),
            "rss_end_mb": round(tail, 1),
            "rss_max_mb": max(v for _, v in self.samples),
            "growth_after_warmup": round(growth, 4),
            "slope_mb_per_h": round((tail - base) / window_h, 1),
            "ok": growth < max_growth and self.proc.poll() is None,
        }


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=ROOT,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TRADESTREAM_")}


def http_env(port: int) -> dict[str, str]:
    return {
        "TRADESTREAM_OBSERVABILITY__HTTP_ENABLED": "true",
        "TRADESTREAM_OBSERVABILITY__HTTP_PORT": str(port),
    }


def start_demo(opts: argparse.Namespace, logs: Path) -> list[Watched]:
    seconds = int(opts.minutes * 60) + 30
    args = ["demo", "--duration", str(seconds), "--rate", str(opts.rate), "--no-live"]
    port = free_port()
    env = {**base_env(), **http_env(port)}
    return [Watched("demo", spawn(args, env, logs / "demo.log"), port)]


def start_services(opts: argparse.Namespace, logs: Path) -> list[Watched]:
    if not opts.bootstrap or not opts.redis:
        raise SystemExit("services mode needs --bootstrap and --redis (scripts/soak.sh sets them)")
    run = f"soak-{uuid4().hex[:6]}"
    env = base_env()
    env.update(
        TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS=opts.bootstrap,
        TRADESTREAM_REDPANDA__GROUP_ID_PREFIX=run,
        TRADESTREAM_REDIS__URL=opts.redis,
        TRADESTREAM_BROKER_NAMESPACE=run,
        TRADESTREAM_TRADING__MARKET_ALWAYS_OPEN="true",
        TRADESTREAM_TRADING__TICK_RATE_PER_S=str(opts.rate),
        TRADESTREAM_OBSERVABILITY__LOG_FORMAT="json",
        TRADESTREAM_OBSERVABILITY__LOG_LEVEL="WARNING",
    )
    order = ("trading_engine", "signal_validator", "strategy_runner", "market_data")
    watched = []
    for name in order:
        port = free_port()
        proc = spawn(["run", name], {**env, **http_env(port)}, logs / f"{name}.log")
        watched.append(Watched(name, proc, port))
        time.sleep(3.0)
    return watched


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("mode", choices=("demo", "services"))
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup-minutes", type=float)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--every", type=float, default=10.0)
    parser.add_argument("--max-growth", type=float, default=0.05)
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL"))
    parser.add_argument("--logs", default=str(ROOT / ".infra" / "soak"))
    parser.add_argument("--output")
    opts = parser.parse_args()
    logs = Path(opts.logs)
    logs.mkdir(parents=True, exist_ok=True)
    warmup_s = 60 * (opts.warmup_minutes if opts.warmup_minutes is not None else opts.minutes / 3)
    end_s = opts.minutes * 60
    watched = start_demo(opts, logs) if opts.mode == "demo" else start_services(opts, logs)
    started = time.monotonic()
    early: list[str] = []
    try:
        while (now := time.monotonic() - started) < end_s:
            for w in watched:
                w.sample(now)
                if w.proc.poll() is not None and w.name not in early:
                    early.append(w.name)
            if early:
                break
            line = " ".join(f"{w.name}={w.samples[-1][1]:.0f}MB" for w in watched if w.samples)
            print(f"{now:7.0f} s  {line}", flush=True)
            time.sleep(opts.every)
    finally:
        verdicts = [w.verdict(warmup_s, end_s, opts.max_growth) for w in watched]
        for w, verdict in zip(watched, verdicts, strict=True):
            try:
                verdict["latency"] = latencies(w.port)
            except OSError as exc:
                verdict["latency"] = {"error": str(exc)}
        for w in reversed(watched):  # the feed first, the engine last
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
                try:
                    w.proc.wait(120)
                except subprocess.TimeoutExpired:
                    w.proc.kill()
    result = {
        "mode": opts.mode,
        "minutes": opts.minutes,
        "warmup_minutes": warmup_s / 60,
        "rate_ticks_per_s": opts.rate,
        "exited_early": early,
        "processes": verdicts,
        "samples": {w.name: w.samples for w in watched},
        "load_average_end": os.getloadavg(),
    }
    if opts.output:
        Path(opts.output).write_text(json.dumps(result, indent=1) + "\n")
    for v in verdicts:
        print(json.dumps(v))
    return 0 if all(v["ok"] for v in verdicts) and not early else 1


if __name__ == "__main__":
    raise SystemExit(main())
