#!/usr/bin/env bash
# A Redis Cluster on loopback: 3 masters, one replica each (Debian's redis-server).
#
#   scripts/redis-cluster.sh start|stop|status|env|nodes
#   scripts/redis-cluster.sh kill N|resume N|failover N   (N = 1..6)
#
#   start       start six nodes and join them with `redis-cli --cluster create`
#               (nodes 1-3 become masters, 4-6 their replicas); wait until the
#               cluster state is ok
#   stop        stop every node and delete its state
#   status      say which nodes run
#   env         print REDIS_CLUSTER_URL=redis://127.0.0.1:<port of node 1>/0
#   nodes       print CLUSTER NODES as one of the live nodes sees it
#   kill N      SIGKILL node N (a crash); when it was a master, wait until its
#               replica took over (after cluster-node-timeout,
#               REDIS_CLUSTER_NODE_TIMEOUT_MS, 2000 ms)
#   resume N    start node N again on its nodes.conf; it rejoins (as a replica
#               if it was a master that got replaced); wait for state ok
#   failover N  promote node N (a replica) with CLUSTER FAILOVER
#
# No persistence (save "" and appendonly no): a killed master's data survives
# only in its replica, as with asynchronous replication in production.
#
# Environment:
#   REDIS_CLUSTER_PORTS   six ports, default 47401,...,47406 (bus: CLUSTER_BUS_PORTS
#                         or port+10 each, default 47411,...,47416)
#   REDIS_CLUSTER_DIR     state dir, default $INFRA_DIR/redis-cluster
#   INFRA_DIR             default <repo>/.infra
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INFRA_DIR="${INFRA_DIR:-.infra}"
case "$INFRA_DIR" in
  /*) ;;
  *) INFRA_DIR="$ROOT/$INFRA_DIR" ;;
esac
log() { echo "redis-cluster.sh: $*" >&2; }

IFS=, read -r -a PORTS <<<"${REDIS_CLUSTER_PORTS:-47401,47402,47403,47404,47405,47406}"
if [ "${#PORTS[@]}" != 6 ]; then
  log "REDIS_CLUSTER_PORTS needs six ports"
  exit 2
fi
if [ -n "${REDIS_CLUSTER_BUS_PORTS:-}" ]; then
  IFS=, read -r -a BUS <<<"$REDIS_CLUSTER_BUS_PORTS"
else
  BUS=()
  for p in "${PORTS[@]}"; do BUS+=("$((p + 10))"); done
fi
RDIR="${REDIS_CLUSTER_DIR:-$INFRA_DIR/redis-cluster}"
case "$RDIR" in
  /*) ;;
  *) RDIR="$ROOT/$RDIR" ;;
esac
NODE_TIMEOUT_MS="${REDIS_CLUSTER_NODE_TIMEOUT_MS:-2000}"

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    log "installing redis-server with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
}

port_of() { echo "${PORTS[$(($1 - 1))]}"; }
dir_of() { echo "$RDIR/node$1"; }
pidfile() { echo "$RDIR/node$1/redis.pid"; }
alive() { [ -f "$(pidfile "$1")" ] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }
cli() { redis-cli -h 127.0.0.1 -p "$(port_of "$1")" "${@:2}"; }

launch() {
  local n="$1" dir
  dir="$(dir_of "$n")"
  mkdir -p "$dir"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$(port_of "$n")" \
    --cluster-enabled yes --cluster-port "${BUS[$((n - 1))]}" \
    --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout "$NODE_TIMEOUT_MS" \
    --cluster-require-full-coverage no \
    --save '' --appendonly no --dir "$dir" \
    --pidfile "$(pidfile "$n")" --logfile "$dir/redis.log"
  local i
  for i in $(seq 1 100); do
    if [ -s "$(pidfile "$n")" ] && [ "$(cli "$n" ping 2>/dev/null)" = PONG ]; then
      return 0
    fi
    sleep 0.1
  done
  tail -n 20 "$dir/redis.log" >&2 || true
  log "node $n did not answer PING"
  return 1
}

# A live node to ask about the cluster.
any_live() {
  local n
  for n in 1 2 3 4 5 6; do
    if alive "$n" && [ "$(cli "$n" ping 2>/dev/null)" = PONG ]; then
      echo "$n"
      return 0
    fi
  done
  return 1
}

# Every live replica has finished its sync with its master.
links_up() {
  local n
  for n in 1 2 3 4 5 6; do
    alive "$n" || continue
    if cli "$n" info replication 2>/dev/null | grep -q '^role:slave'; then
      cli "$n" info replication | grep -q '^master_link_status:up' || return 1
    fi
  done
}

# Wait until every live node says cluster_state:ok, 3 masters serve slots and
# ($2) replicas are attached.
wait_ok() {
  local timeout="${1:-60}" replicas="${2:-0}" began=$SECONDS n ok
  while true; do
    ok=1
    for n in 1 2 3 4 5 6; do
      alive "$n" || continue
      cli "$n" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || ok=0
    done
    if [ "$ok" = 1 ]; then
      n="$(any_live)"
      local masters slaves
      masters="$(cli "$n" cluster nodes | awk '$3 ~ /master/ && $3 !~ /fail/ && NF > 8' | wc -l)"
      slaves="$(cli "$n" cluster nodes | awk '$3 ~ /slave/ && $3 !~ /fail/' | wc -l)"
      if [ "$masters" -ge 3 ] && [ "$slaves" -ge "$replicas" ] && links_up; then
        return 0
      fi
    fi
    if [ $((SECONDS - began)) -ge "$timeout" ]; then
      log "cluster not ok after ${timeout}s"
      return 1
    fi
    sleep 0.2
  done
}

start() {
  mkdir -p "$RDIR"
  local n running=0
  for n in 1 2 3 4 5 6; do alive "$n" && running=$((running + 1)); done
  if [ "$running" = 6 ]; then
    log "already running"
    echo "REDIS_CLUSTER_URL=redis://127.0.0.1:$(port_of 1)/0"
    return 0
  fi
  if [ "$running" != 0 ]; then
    log "$running of 6 nodes running; run stop first"
    exit 1
  fi
  ensure_redis
  local p busy=""
  for p in "${PORTS[@]}" "${BUS[@]}"; do
    if command -v ss >/dev/null 2>&1 && [ -n "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]; then
      busy="$busy $p"
    fi
  done
  if [ -n "$busy" ]; then
    log "ports in use:$busy (another process, or an outgoing connection's ephemeral port)"
    exit 1
  fi
  local began=$SECONDS
  for n in 1 2 3 4 5 6; do
    rm -rf "$(dir_of "$n")"
    launch "$n" || {
      stop
      exit 1
    }
  done
  local addrs=()
  for n in 1 2 3 4 5 6; do addrs+=("127.0.0.1:$(port_of "$n")"); done
  if ! redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
      >"$RDIR/create.log" 2>&1; then
    cat "$RDIR/create.log" >&2
    log "cluster create failed"
    stop
    exit 1
  fi
  if ! wait_ok 60 3; then
    stop
    exit 1
  fi
  log "cluster ok in $((SECONDS - began))s on ports ${PORTS[*]}"
  echo "REDIS_CLUSTER_URL=redis://127.0.0.1:$(port_of 1)/0"
}

stop() {
  # redis-server deletes its pid file while it shuts down: collect PIDs first.
  local n pid i pids=()
  for n in 1 2 3 4 5 6; do
    alive "$n" && pids+=("$(cat "$(pidfile "$n")")")
  done
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  rm -rf "$RDIR"
}

check_n() {
  case "${1:-}" in
    1 | 2 | 3 | 4 | 5 | 6) ;;
    *)
      log "node number must be 1..6"
      exit 2
      ;;
  esac
}

kill_node() {
  check_n "$1"
  if ! alive "$1"; then
    log "node $1 is not running"
    return 0
  fi
  local pid i was_master=0 began=$SECONDS
  cli "$1" role 2>/dev/null | head -n 1 | grep -q master && was_master=1
  pid="$(cat "$(pidfile "$1")")"
  kill -KILL "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  rm -f "$(pidfile "$1")"
  log "killed node $1 (pid $pid)"
  if [ "$was_master" = 1 ]; then
    # Its replica takes over once the others mark it failed.
    sleep "$(awk "BEGIN { print $NODE_TIMEOUT_MS / 1000 }")"
    wait_ok 60 0
    log "a replica of node $1 took over after $((SECONDS - began))s"
  fi
}

resume_node() {
  check_n "$1"
  if alive "$1"; then
    log "node $1 already running"
    return 0
  fi
  launch "$1"
  wait_ok 60
  log "node $1 back"
}

failover_node() {
  check_n "$1"
  cli "$1" cluster failover >/dev/null
  local i
  for i in $(seq 1 100); do
    cli "$1" role 2>/dev/null | head -n 1 | grep -q master && {
      log "node $1 is master"
      return 0
    }
    sleep 0.1
  done
  log "node $1 did not become master within 10s"
  return 1
}

status() {
  local n up=0 role
  for n in 1 2 3 4 5 6; do
    if alive "$n"; then
      role="$(cli "$n" role 2>/dev/null | head -n 1 || echo '?')"
      echo "node $n: running (pid $(cat "$(pidfile "$n")")) on 127.0.0.1:$(port_of "$n"), $role"
      up=$((up + 1))
    else
      echo "node $n: stopped"
    fi
  done
  [ "$up" -gt 0 ]
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "REDIS_CLUSTER_URL=redis://127.0.0.1:$(port_of 1)/0" ;;
  nodes) cli "$(any_live)" cluster nodes ;;
  kill) kill_node "${2:-}" ;;
  resume) resume_node "${2:-}" ;;
  failover) failover_node "${2:-}" ;;
  *)
    echo "usage: $0 start|stop|status|env|nodes|kill N|resume N|failover N" >&2
    exit 2
    ;;
esac
