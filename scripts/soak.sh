#!/usr/bin/env bash
# Memory soak of the trading pipeline: bounded, stops by itself.
#
#   bash scripts/soak.sh [demo|services|all] [soak options]
#
#   demo      `tradestream demo` on the embedded broker (no servers needed)
#   services  the four services as separate processes on a Kafka broker and a
#             redis-server of their own, started here on free loopback ports
#             and stopped at the end
#   all       both, one after the other (default)
#
# Options go to benchmarks/soak.py: --minutes (30), --rate (200 ticks/s),
# --warmup-minutes (a third of the run), --max-growth (0.05). Results are written
# to benchmarks/results/soak-<mode>-<date>.json; the exit code is non-zero when a
# process's resident memory grew by 5% or more after the warm-up.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "soak.sh: $*" >&2; }

mode="${1:-all}"
case "$mode" in
  demo|services|all) shift || true ;;
  -*) mode=all ;;
  *) log "unknown mode $mode (demo, services or all)"; exit 2 ;;
esac

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f .venv/.tradestream-install ] || [ "$(cat .venv/.tradestream-install)" != "$stamp" ]; then
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$stamp" >.venv/.tradestream-install
fi

free_port() {
  .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

day="$(date -u +%Y-%m-%d)"
rc=0

if [ "$mode" = demo ] || [ "$mode" = all ]; then
  log "demo soak"
  .venv/bin/python benchmarks/soak.py demo "$@" \
    --logs .infra/soak/demo --output "benchmarks/results/soak-demo-$day.json" || rc=1
fi

if [ "$mode" = services ] || [ "$mode" = all ]; then
  export INFRA_DIR="$ROOT/.infra/soak/servers"
  export KAFKA_PORT="${SOAK_KAFKA_PORT:-$(free_port)}"
  export KAFKA_CONTROLLER_PORT="$(free_port)"
  export REDIS_PORT="${SOAK_REDIS_PORT:-$(free_port)}"
  if [ -z "${KAFKA_LIBS_DIR:-}" ] && [ -d "$ROOT/.infra/kafka/libs" ]; then
    export KAFKA_LIBS_DIR="$ROOT/.infra/kafka/libs"
  fi
  cleanup() {
    bash scripts/kafka.sh stop >/dev/null 2>&1 || true
    bash scripts/redis.sh stop >/dev/null 2>&1 || true
  }
  trap cleanup EXIT
  bash scripts/kafka.sh start >/dev/null
  bash scripts/redis.sh start >/dev/null
  log "services soak on Kafka 127.0.0.1:$KAFKA_PORT and redis 127.0.0.1:$REDIS_PORT"
  .venv/bin/python benchmarks/soak.py services "$@" \
    --bootstrap "127.0.0.1:$KAFKA_PORT" --redis "redis://127.0.0.1:$REDIS_PORT/0" \
    --logs .infra/soak/services --output "benchmarks/results/soak-services-$day.json" || rc=1
fi
exit "$rc"
