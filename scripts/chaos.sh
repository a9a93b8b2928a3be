#!/usr/bin/env bash
# The chaos suite: faults against a multi-instance service on a 3-broker cluster.
#
#   bash scripts/chaos.sh [--scenarios kill,churn,...] [--rate 150]
#
# Starts a 3-broker KRaft cluster (scripts/kafka-cluster.sh), a redis-server
# (scripts/redis.sh) and a Redis Cluster (scripts/redis-cluster.sh); runs every
# scenario of tests/chaos/scenarios.py (each fault alone, then combined) with
# three workload processes fed at a steady rate; verifies each run from the
# topics, the group's offsets and the side-effect logs; prints the table and
# writes it to docs/reliability.md; stops what it started. Bounded: the
# scenarios stop being started after 12 minutes and the whole run is killed at
# 15 minutes. Exit status 1 when a verification failed.
#
# Ports: Kafka 49101-49103 (controllers 49111-49113), redis 47407, Redis
# Cluster 47401-47406 (bus 47411-47416); override with KAFKA_CLUSTER_PORTS,
# KAFKA_CLUSTER_CONTROLLER_PORTS, CHAOS_REDIS_PORT, REDIS_CLUSTER_PORTS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "chaos.sh: $*" >&2; }

if [ ! -x .venv/bin/python ]; then
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  python3 -m venv .venv
fi
stamp="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f .venv/.tradestream-install ] || [ "$(cat .venv/.tradestream-install)" != "$stamp" ]; then
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$stamp" >.venv/.tradestream-install
fi

export INFRA_DIR="${INFRA_DIR:-.infra}"
STATE="$ROOT/.infra/chaos-run"
mkdir -p "$STATE"
export KAFKA_CLUSTER_DIR="$STATE/kafka-cluster"
export REDIS_CLUSTER_DIR="$STATE/redis-cluster"
CHAOS_REDIS_PORT="${CHAOS_REDIS_PORT:-47407}"

started=()
cleanup() {
  local s
  for s in "${started[@]}"; do
    case "$s" in
      kafka) bash scripts/kafka-cluster.sh stop || true ;;
      redis) REDIS_PORT="$CHAOS_REDIS_PORT" INFRA_DIR="$STATE/redis" bash scripts/redis.sh stop || true ;;
      rcluster) bash scripts/redis-cluster.sh stop || true ;;
    esac
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Fixed ports can be taken for a moment as some connection's ephemeral port:
# one more try after a pause.
start_twice() {
  "$@" || { sleep 5 && "$@"; }
}
started+=(kafka)
start_twice bash scripts/kafka-cluster.sh start >"$STATE/kafka.env"
started+=(redis)
start_twice env REDIS_PORT="$CHAOS_REDIS_PORT" INFRA_DIR="$STATE/redis" bash scripts/redis.sh start >/dev/null
started+=(rcluster)
start_twice bash scripts/redis-cluster.sh start >"$STATE/redis-cluster.env"

bootstrap="$(sed -n 's/^KAFKA_CLUSTER_BOOTSTRAP=//p' "$STATE/kafka.env")"
rcluster_url="$(sed -n 's/^REDIS_CLUSTER_URL=//p' "$STATE/redis-cluster.env")"
env | grep -E '^(KAFKA_|REDIS_CLUSTER_|INFRA_DIR)' >"$STATE/scripts.env" || true

log "running the scenarios (at most 15 minutes)"
rc=0
timeout --signal=TERM --kill-after=30 900 .venv/bin/python -m tests.chaos.run \
  --bootstrap "$bootstrap" --replication 3 \
  --redis-url "redis://127.0.0.1:$CHAOS_REDIS_PORT/0" \
  --redis-pid "$(cat "$STATE/redis/redis/redis.pid")" \
  --kafka-cluster-env "$STATE/scripts.env" \
  --redis-cluster-url "redis+cluster://${rcluster_url#redis://}" \
  --redis-cluster-env "$STATE/scripts.env" \
  --deadline-s 720 --write-docs "$@" || rc=$?
exit "$rc"
