#!/usr/bin/env bash
# The project test command: lint, type-check, then pytest against a real
# Kafka broker and redis-server.
#
#   bash scripts/test.sh [pytest args...]
#
# Kafka and redis are started here (scripts/kafka.sh, scripts/redis.sh) and
# stopped on exit, unless KAFKA_BOOTSTRAP_SERVERS / REDIS_URL are already set,
# in which case those servers are used and nothing is started.
# Ports for the started servers: KAFKA_PORT (19092) and REDIS_PORT (16379).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { echo "test.sh: $*" >&2; }

# --- Python environment -----------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    log "installing python3-venv with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  log "creating .venv"
  python3 -m venv .venv
fi
# Reinstall only when pyproject.toml changed (the install is editable).
stamp="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f .venv/.tradestream-install ] || [ "$(cat .venv/.tradestream-install)" != "$stamp" ]; then
  log "installing the project into .venv"
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$stamp" >.venv/.tradestream-install
fi

# --- Static checks ------------------------------------------------------------
log "ruff check"
.venv/bin/ruff check .
log "mypy"
.venv/bin/mypy

# --- Infrastructure -----------------------------------------------------------
started_kafka=0
started_redis=0
cleanup() {
  # Runs on every exit path; stops only what this script started.
  if [ "$started_kafka" = 1 ]; then bash scripts/kafka.sh stop || true; fi
  if [ "$started_redis" = 1 ]; then bash scripts/redis.sh stop || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  export KAFKA_PORT="${KAFKA_PORT:-19092}"
  started_kafka=1
  bash scripts/kafka.sh start >/dev/null
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT"
else
  log "using existing Kafka at $KAFKA_BOOTSTRAP_SERVERS"
fi

if [ -z "${REDIS_URL:-}" ]; then
  export REDIS_PORT="${REDIS_PORT:-16379}"
  started_redis=1
  bash scripts/redis.sh start >/dev/null
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
else
  log "using existing redis at $REDIS_URL"
  # Let `scripts/redis.sh restart` find the right server.
  if [ -z "${REDIS_PORT:-}" ] && [[ "$REDIS_URL" =~ :([0-9]+)(/|$) ]]; then
    export REDIS_PORT="${BASH_REMATCH[1]}"
  fi
fi

export TRADESTREAM_TEST_INFRA=1
export REDIS_SERVER_BIN="${REDIS_SERVER_BIN:-$(command -v redis-server || true)}"
export TRADESTREAM_REDIS_SCRIPT="${TRADESTREAM_REDIS_SCRIPT:-$ROOT/scripts/redis.sh}"
export INFRA_DIR="${INFRA_DIR:-.infra}"

# --- Tests --------------------------------------------------------------------
log "pytest (KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS REDIS_URL=$REDIS_URL)"
rc=0
.venv/bin/python -m pytest -q "$@" || rc=$?
if [ "$rc" = 5 ]; then
  log "pytest collected no tests; treating as failure"
  exit 1
fi
exit "$rc"
