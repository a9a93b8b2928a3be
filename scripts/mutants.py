"""Deliberate bugs in the hot path, one at a time: does the test suite catch each?

Each mutant is one textual change to one file. For each, the file is changed, the
given pytest command runs (bounded by ``--timeout``), and the file is restored,
whatever happens. A mutant is *caught* when the suite fails. The table goes to
stdout; nothing is left changed.

    .venv/bin/python scripts/mutants.py                       # plain pytest, no servers
    bash scripts/test.sh --co -q >/dev/null; .venv/bin/python scripts/mutants.py --servers
                                                                # with the test servers' env

``--servers`` expects ``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL`` (as set by
``scripts/test.sh``) and runs the whole suite against them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    before: str
    after: str


MUTANTS = [
    Mutant(
        "offset tracker: commit past the lowest unfinished offset",
        "core/streaming/infrastructure/offset_tracker.py",
        "            return self.in_flight[0]",
        "            return self.in_flight[-1] + 1",
    ),
    Mutant(
        "dedup: an id found done is not a duplicate",
        "core/streaming/reliability/dedup_store.py",
        '                elif flag == "D":',
        '                elif flag == "D" and False:',
    ),
    Mutant(
        "dedup: an id held elsewhere counts as claimed",
        "core/streaming/reliability/dedup_store.py",
        '                if flag == "C" or flag == "T":',
        '                if flag in "CTP":',
    ),
    Mutant(
        "retries: one attempt more than the budget",
        "core/streaming/reliability/error_handler.py",
        "                or message.attempts >= self.max_attempts",
        "                or message.attempts > self.max_attempts",
    ),
    Mutant(
        "key lanes: a key taken by a lane does not count as running",
        "core/streaming/orchestration/key_queue.py",
        "            running.add(key)\n",
        "            pass\n",
    ),
    Mutant(
        "backpressure: resume at the full bound instead of at half",
        "core/streaming/orchestration/consumer_flow.py",
        "                    d.in_flight > o.max_in_flight // 2",
        "                    d.in_flight >= o.max_in_flight",
    ),
    Mutant(
        "envelopes: a mapping with an id goes out unwrapped",
        "core/streaming/infrastructure/message_producer.py",
        "        elif isinstance(data, Mapping):\n            payload = dict(data)",
        "        elif isinstance(data, Mapping):\n            payload = dict(data)\n"
        '            if "id" in payload:\n                return payload',
    ),
    Mutant(
        "secrets: the Redis address keeps its credentials",
        "core/config/redis_settings.py",
        '        rest = rest.rsplit("@", 1)[-1]',
        "        rest = rest",
    ),
    Mutant(
        "market hours: 15:30 is still open",
        "services/trading_engine/market_hours.py",
        "        if clock_time >= SESSION_CLOSE:",
        "        if clock_time > SESSION_CLOSE:",
    ),
    Mutant(
        "checkpoint: done marks not written before the commit",
        "core/streaming/orchestration/checkpoint.py",
        "                    await self.dedup.mark_done(handled)",
        "                    pass",
    ),
    Mutant(
        "outputs: a handler's sends are not awaited before the commit",
        "core/streaming/infrastructure/message_producer.py",
        "        track_output(pending.ack)",
        "        pass",
    ),
]


def run(command: list[str], timeout: float) -> tuple[bool, float]:
    started = time.monotonic()
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return True, time.monotonic() - started  # a hang is caught too (the suite fails)
    return result.returncode != 0, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", action="store_true", help="run the suite with servers")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--only", default="", help="comma-separated mutant numbers (1-based)")
    args = parser.parse_args()
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    if not args.servers:
        command += ["-m", "not kafka and not redis"]
    clean, seconds = run(command, args.timeout)
    if clean:
        raise SystemExit("the suite fails without any mutant: fix that first")
    print(f"clean run passes ({seconds:.0f} s)\n")
    chosen = {int(n) for n in args.only.split(",") if n}
    caught_count = 0
    rows = []
    for number, mutant in enumerate(MUTANTS, 1):
        if chosen and number not in chosen:
            continue
        path = ROOT / mutant.path
        original = path.read_text()
        if original.count(mutant.before) != 1:
            raise SystemExit(f"mutant {number} ({mutant.name}): anchor not found once")
        try:
            path.write_text(original.replace(mutant.before, mutant.after))
            caught, seconds = run(command, args.timeout)
        finally:
            path.write_text(original)
        caught_count += caught
        rows.append((number, mutant.name, caught, seconds))
        verdict = "caught  " if caught else "SURVIVED"
        print(f"{number:2d}. {verdict} {mutant.name} ({seconds:.0f} s)")
    print(f"\n{caught_count} of {len(rows)} mutants caught")


if __name__ == "__main__":
    main()
