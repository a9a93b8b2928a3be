"""Run chaos scenarios, print the table, and (optionally) write it to docs/reliability.md.

    python -m tests.chaos.run --bootstrap B --redis-url U [--redis-pid P] \\
        [--kafka-cluster-env FILE] [--redis-cluster-url U2 --redis-cluster-env FILE] \\
        [--scenarios kill,churn,...] [--rate 150] [--write-docs] [--deadline-s 840]

``scripts/chaos.sh`` starts the servers and calls this. Scenarios needing a
server that is not there (a broker cluster, a Redis Cluster) are skipped and
say so. The whole run stops starting new scenarios at ``--deadline-s``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sys
import time
from pathlib import Path

from tests.chaos.harness import Infra
from tests.chaos.scenarios import Result, RunConfig, Scenario, catalogue, run_scenario

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- chaos-table:begin -->", "<!-- chaos-table:end -->"

HEADER = (
    "| scenario | load (msg/s): fed / handled | faults injected | inputs (poison) | lost "
    "| duplicated side effects | re-executions (bound) | recovery s (latency p50) "
    "| committed = end | skipped offsets | poison in DLQ with provenance |"
)
RULE = "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |"


def row(result: Result, offered: float) -> str:
    v = result.verdict
    faults: dict[str, int] = {}
    for label in result.faults:
        faults[label] = faults.get(label, 0) + 1
    injected = ", ".join(f"{k} x{n}" if n > 1 else k for k, n in faults.items()) or "none"
    recovery = f"{max(v.recovery_s.values()):.1f}" if v.recovery_s else "-"
    poison_ok = (
        "yes"
        if not v.bad_provenance and not v.lost_poison
        else f"no ({len(v.lost_poison)} missing, {len(v.bad_provenance)} bad)"
    )
    return (
        f"| {result.scenario.label} | {result.stats.rate:.0f} / {v.handled_rate:.0f} | {injected} "
        f"| {v.inputs} ({v.poison}) | {len(v.lost)} | {v.duplicated_effects} "
        f"| {v.reexecutions} ({v.reexecution_bound}) | "
        f"{recovery} (p50 {v.latency_p50_s * 1000:.0f} ms) | "
        f"{'yes' if not v.uncommitted else 'no'} | {len(v.skipped)} | {poison_ok} |"
    )


def table(results: list[Result], offered: float) -> str:
    return "\n".join([HEADER, RULE, *(row(r, offered) for r in results)])


def details(results: list[Result]) -> str:
    lines = []
    for r in results:
        v = r.verdict
        state = "ok" if v.ok else "FAILED: " + "; ".join(v.problems())
        drained = "did not drain" if r.drained_s == float("inf") else f"{r.drained_s:.0f} s"
        lines.append(
            f"- **{r.scenario.name}** ({r.scenario.policy}, {r.scenario.instances} instances): "
            f"{state}. Drained {drained} after the feed stopped; exit codes "
            f"{sorted(set(r.exit_codes.values()), key=str)}; recovery per fault "
            + ", ".join(f"{k} {s:.1f} s" for k, s in v.recovery_s.items())
            + (f"; {'; '.join(r.notes)}" if r.notes else "")
            + (
                f"; {v.unexpected_dead_letters} unexpected dead letters"
                if v.unexpected_dead_letters
                else ""
            )
            + "."
        )
    return "\n".join(lines)


def write_docs(markdown: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Reliability\n"
    block = f"{BEGIN}\n{markdown}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


def _read_env(path: str | None) -> dict[str, str] | None:
    if not path:
        return None
    env = dict(os.environ)
    for line in Path(path).read_text().splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            env[key] = value
    return env


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--redis-pid", type=int, action="append", default=[])
    parser.add_argument("--replication", type=int, default=1)
    parser.add_argument("--kafka-cluster-env")
    parser.add_argument("--redis-cluster-url")
    parser.add_argument("--redis-cluster-env")
    parser.add_argument("--scenarios", default="all")
    parser.add_argument("--rate", type=float, default=150.0)
    parser.add_argument("--deadline-s", type=float, default=840.0)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--base-dir", default=str(ROOT / ".infra" / "chaos"))
    args = parser.parse_args(argv)

    began = time.monotonic()
    load_before = os.getloadavg()[0]
    infra = Infra(
        args.bootstrap,
        args.redis_url,
        args.replication,
        _read_env(args.kafka_cluster_env),
        args.redis_pid,
        _read_env(args.redis_cluster_env),
    )
    cfg = RunConfig(rate=args.rate, base_dir=Path(args.base_dir))
    scenarios = catalogue()
    chosen = list(scenarios) if args.scenarios == "all" else args.scenarios.split(",")
    results: list[Result] = []
    skipped: list[str] = []
    for name in chosen:
        scenario: Scenario = scenarios[name]
        if scenario.kafka_cluster and infra.kafka_cluster_env is None:
            skipped.append(f"{name} (needs the 3-broker cluster)")
            continue
        if scenario.redis_cluster and not args.redis_cluster_url:
            skipped.append(f"{name} (needs the Redis Cluster)")
            continue
        if time.monotonic() - began > args.deadline_s:
            skipped.append(f"{name} (time budget spent)")
            continue
        run_infra = infra
        if scenario.redis_cluster:
            run_infra = Infra(
                infra.bootstrap,
                args.redis_cluster_url,
                infra.replication,
                infra.kafka_cluster_env,
                [],
                infra.redis_cluster_env,
            )
        print(f"chaos: {name}: {scenario.label} ...", file=sys.stderr, flush=True)
        result = await run_scenario(scenario, run_infra, cfg)
        results.append(result)
        print(f"chaos: {name}: {'ok' if result.verdict.ok else 'FAILED'}", file=sys.stderr)
        print(table([result], args.rate).splitlines()[-1], file=sys.stderr, flush=True)

    markdown = table(results, args.rate) + "\n\n" + details(results)
    if skipped:
        markdown += "\n\nNot run: " + ", ".join(skipped) + "."
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    markdown += (
        f"\n\nMeasured {stamp} in {time.monotonic() - began:.0f} s, offered {args.rate:g} msg/s; "
        f"1-minute load average {load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at "
        f"the end ({os.cpu_count()} cores)."
    )
    print(markdown)
    if args.write_docs:
        write_docs(markdown)
    return 0 if all(r.verdict.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
