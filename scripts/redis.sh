#!/usr/bin/env bash
# Throwaway redis-server for tests and local development (no persistence).
#
#   scripts/redis.sh start|stop|restart|status
#
# Environment:
#   REDIS_PORT  port on 127.0.0.1, default 16379
#   INFRA_DIR   state directory, default <repo>/.infra
#               (relative paths are taken from the repo root)
#
# Integration tests restart redis mid-test through `restart`, using the
# REDIS_PORT and INFRA_DIR exported by scripts/test.sh (or the dev env file).
# Data does not survive a restart: saving and AOF are disabled.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INFRA_DIR="${INFRA_DIR:-.infra}"
case "$INFRA_DIR" in
  /*) ;;
  *) INFRA_DIR="$ROOT/$INFRA_DIR" ;;
esac

REDIS_PORT="${REDIS_PORT:-16379}"
RDIR="$INFRA_DIR/redis"
PIDFILE="$RDIR/redis.pid"
LOGFILE="$RDIR/redis.log"

log() { echo "redis.sh: $*" >&2; }

# Install Debian's redis-server (which brings redis-cli) when missing.
ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    log "installing redis-server with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
}

is_running() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

ping() {
  [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
}

start() {
  mkdir -p "$RDIR"
  if is_running; then
    log "already running (pid $(cat "$PIDFILE"))"
    echo "REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
    return 0
  fi
  rm -f "$PIDFILE"
  ensure_redis

  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" \
    --save '' --appendonly no --dir "$RDIR" \
    --pidfile "$PIDFILE" --logfile "$LOGFILE"

  # Wait up to 10 s for the pidfile and a PONG.
  local i
  for i in $(seq 1 100); do
    if [ -s "$PIDFILE" ] && ping; then
      log "ready on port $REDIS_PORT (pid $(cat "$PIDFILE"))"
      echo "REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
      return 0
    fi
    sleep 0.1
  done
  tail -n 20 "$LOGFILE" >&2 || true
  log "redis-server did not answer PING on port $REDIS_PORT"
  stop
  exit 1
}

stop() {
  if [ -f "$PIDFILE" ]; then
    local pid
    pid="$(cat "$PIDFILE")"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      local i
      for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      if kill -0 "$pid" 2>/dev/null; then
        log "redis-server did not stop after 10s; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
      fi
    fi
    rm -f "$PIDFILE"
  fi
}

status() {
  if is_running; then
    echo "running (pid $(cat "$PIDFILE")) on 127.0.0.1:$REDIS_PORT"
  else
    echo "stopped"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart)
    stop
    start
    ;;
  status) status ;;
  *)
    echo "usage: $0 start|stop|restart|status" >&2
    exit 2
    ;;
esac
