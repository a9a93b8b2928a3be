"""Where the consume time goes: profile the timed part of ``bench_consume``'s variants.

Preloads a fresh topic exactly as ``bench_consume.py`` does, then runs the chosen variants
(``raw`` and ``default`` by default) once per profiler, with the profiler switched on only
while the benchmark clock runs (group join and setup are not profiled). Reports go to
``benchmarks/results/profile-<date>/``:

* ``<variant>.cprofile.txt``   -- cProfile, top functions by own time and by cumulative time
                                  (exact call counts; its overhead inflates cheap calls);
* ``<variant>.pyinstrument.txt`` (and ``.html`` with ``--html``) -- pyinstrument call tree
                                  (sampling, low overhead; needs ``pip install pyinstrument``
                                  in the venv).

Timings under a profiler are slower than the benchmark's; compare shares, not rates.

    source /tmp/dev-infra/env
    .venv/bin/python benchmarks/profile_consume.py --messages 100000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime as dt
import io
import os
import pstats
import uuid
from pathlib import Path
from typing import Any

from bench_consume import (
    RESULTS_DIR,
    Measurement,
    check_local,
    create_topic,
    delete_topic,
    preload,
    run_message_consumer,
    run_raw,
)

from core.config.settings import RedpandaSettings


class CProfileProbe:
    """cProfile switched on while the clock runs."""

    def __init__(self) -> None:
        self.profile = cProfile.Profile()

    def start(self) -> None:
        self.profile.enable()

    def stop(self) -> None:
        self.profile.disable()

    def report(self, limit: int) -> str:
        out = io.StringIO()
        stats = pstats.Stats(self.profile, stream=out)
        stats.strip_dirs()
        out.write("=== by own time (tottime) ===\n")
        stats.sort_stats("tottime").print_stats(limit)
        out.write("\n=== by cumulative time ===\n")
        stats.sort_stats("cumulative").print_stats(limit)
        return out.getvalue()


class PyinstrumentProbe:
    """pyinstrument sampling the loop thread while the clock runs."""

    def __init__(self) -> None:
        from pyinstrument import Profiler

        # "disabled": sample the thread's real stack, so aiokafka's fetcher task and the
        # event loop itself show up next to the consuming coroutine.
        self.profiler: Any = Profiler(interval=0.0002, async_mode="disabled")

    def start(self) -> None:
        self.profiler.start()

    def stop(self) -> None:
        self.profiler.stop()

    def report_text(self) -> str:
        text: str = self.profiler.output_text(unicode=False, color=False, show_all=False)
        return text

    def report_html(self) -> str:
        html: str = self.profiler.output_html()
        return html


async def run_variant(
    variant: str,
    bootstrap: str,
    config: RedpandaSettings,
    topic: str,
    count: int,
    probe: CProfileProbe | PyinstrumentProbe,
) -> Measurement:
    if variant == "raw":
        coro = run_raw(bootstrap, topic, count, 60.0, probe)
    else:
        coro = run_message_consumer(variant, config, topic, count, None, 60.0, probe)
    return await asyncio.wait_for(coro, 300.0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:29092"),
        help="broker host:port (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:29092)",
    )
    parser.add_argument("--messages", type=int, default=100_000, help="messages (100000)")
    parser.add_argument("--partitions", type=int, default=3, help="topic partitions (3)")
    parser.add_argument("--variants", default="raw,default", help="subset of raw,default")
    parser.add_argument(
        "--profilers", default="cprofile,pyinstrument", help="subset of cprofile,pyinstrument"
    )
    parser.add_argument("--limit", type=int, default=30, help="rows per cProfile table (30)")
    parser.add_argument("--output-dir", type=Path, help="default results/profile-DATE")
    parser.add_argument("--html", action="store_true", help="also write pyinstrument HTML")
    args = parser.parse_args()
    check_local(args.bootstrap)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.profilers = [p.strip() for p in args.profilers.split(",") if p.strip()]
    if not set(args.variants) <= {"raw", "default"}:
        parser.error("--variants: raw and/or default")
    if not set(args.profilers) <= {"cprofile", "pyinstrument"}:
        parser.error("--profilers: cprofile and/or pyinstrument")
    return args


async def profile_variants(args: argparse.Namespace) -> dict[str, str]:
    """Preload, run every (profiler, variant) once; report file name -> report text."""
    config = RedpandaSettings(bootstrap_servers=args.bootstrap)
    now = dt.datetime.now(dt.UTC)
    reports: dict[str, str] = {}
    topic = f"bench.profile.{now:%Y%m%d%H%M%S}.{uuid.uuid4().hex[:6]}"
    await create_topic(config, topic, args.partitions)
    try:
        await preload(config, topic, args.messages)
        for profiler in args.profilers:
            for variant in args.variants:
                probe: CProfileProbe | PyinstrumentProbe = (
                    CProfileProbe() if profiler == "cprofile" else PyinstrumentProbe()
                )
                result = await run_variant(
                    variant, args.bootstrap, config, topic, args.messages, probe
                )
                print(
                    f"{profiler:<12} {variant:<8} {result.messages:,} msgs in "
                    f"{result.seconds:.3f} s ({result.rate:,.0f} msg/s under the profiler), "
                    f"gc {result.gc_collections} collections {result.gc_by_generation} "
                    f"{result.gc_seconds:.3f} s"
                )
                if isinstance(probe, CProfileProbe):
                    reports[f"{variant}.cprofile.txt"] = probe.report(args.limit)
                else:
                    reports[f"{variant}.pyinstrument.txt"] = probe.report_text()
                    if args.html:
                        reports[f"{variant}.pyinstrument.html"] = probe.report_html()
    finally:
        with contextlib.suppress(Exception):
            await delete_topic(config, topic)
    return reports


def main() -> int:
    args = parse_args()
    reports = asyncio.run(profile_variants(args))
    out_dir: Path = args.output_dir or RESULTS_DIR / f"profile-{dt.date.today():%Y-%m-%d}"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in reports.items():
        (out_dir / name).write_text(text)
    print(f"reports in {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
