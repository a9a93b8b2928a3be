#!/usr/bin/env bash
# Longer variant of the trading engine's kill -9 proof (the test command runs 3
# rounds with a 5 s claim lifetime): 10 rounds, the default 60 s dedup claim
# lifetime, so the stall after a crash shows in full. Bounded: the test times
# out after 20 minutes. Starts its own Kafka and redis-server (private ones of
# the test) on free loopback ports.
#
#   bash scripts/kill_engine.sh [rounds] [report.json]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export TRADESTREAM_KILL_ROUNDS="${1:-10}"
export TRADESTREAM_KILL_REPORT="${2:-$ROOT/benchmarks/results/kill-engine-$(date -u +%Y-%m-%d).json}"
export TRADESTREAM_KILL_CLAIM_TTL_MS="${TRADESTREAM_KILL_CLAIM_TTL_MS:-60000}"
export TRADESTREAM_KILL_TIMEOUT_S="${TRADESTREAM_KILL_TIMEOUT_S:-1200}"
exec bash scripts/test.sh -p no:cacheprovider -s tests/integration/trading/test_engine_kill9.py
