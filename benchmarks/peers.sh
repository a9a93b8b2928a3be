#!/usr/bin/env bash
# The performance benchmarks of docs/performance.md, on a Kafka broker and a
# redis-server of their own (started here on loopback unless KAFKA_BOOTSTRAP_SERVERS
# and REDIS_URL are set), in a virtualenv of their own (.venv-bench) with the peers.
#
#   bash benchmarks/peers.sh                 # throughput table, both preloads
#   bash benchmarks/peers.sh --concurrency   # key-ordered concurrency
#   bash benchmarks/peers.sh --latency       # end-to-end latency at 1,000 msg/s
#   bash benchmarks/peers.sh --soak          # RSS over 10 minutes of load
#   bash benchmarks/peers.sh --all           # all of the above
#
# Other arguments go to bench_peers.py (for example --messages 50000 --repeat 5).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "peers.sh: $*" >&2; }

if [ ! -x .venv-bench/bin/python ]; then
  log "creating .venv-bench"
  python3 -m venv .venv-bench
fi
stamp="$(cat pyproject.toml benchmarks/requirements-peers.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f .venv-bench/.stamp ] || [ "$(cat .venv-bench/.stamp)" != "$stamp" ]; then
  log "installing the project and the peers into .venv-bench"
  .venv-bench/bin/python -m pip install -q -e . -r benchmarks/requirements-peers.txt
  echo "$stamp" >.venv-bench/.stamp
fi

started_kafka=0
started_redis=0
cleanup() {
  if [ "$started_kafka" = 1 ]; then bash scripts/kafka.sh stop || true; fi
  if [ "$started_redis" = 1 ]; then bash scripts/redis.sh stop || true; fi
}
trap cleanup EXIT
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  export KAFKA_PORT="${KAFKA_PORT:-19192}" INFRA_DIR="${INFRA_DIR:-.infra-bench}"
  started_kafka=1
  bash scripts/kafka.sh start >/dev/null
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT"
fi
if [ -z "${REDIS_URL:-}" ]; then
  export REDIS_PORT="${REDIS_PORT:-16479}" INFRA_DIR="${INFRA_DIR:-.infra-bench}"
  started_redis=1
  bash scripts/redis.sh start >/dev/null
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
fi

py=.venv-bench/bin/python
mode="${1:-}"
case "$mode" in
  --concurrency) shift; $py benchmarks/bench_concurrency.py "$@" ;;
  --latency) shift; $py benchmarks/bench_latency.py "$@" ;;
  --soak) shift; $py benchmarks/bench_soak.py "$@" ;;
  --all)
    shift
    $py benchmarks/bench_peers.py "$@"
    $py benchmarks/bench_peers.py --empty-partition "$@"
    $py benchmarks/bench_concurrency.py
    $py benchmarks/bench_latency.py
    $py benchmarks/bench_soak.py
    ;;
  *)
    $py benchmarks/bench_peers.py "$@"
    $py benchmarks/bench_peers.py --empty-partition "$@"
    ;;
esac
