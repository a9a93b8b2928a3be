# Shared by scripts/kafka-cluster.sh and scripts/secure.sh (sourced, not run).
#
# Expects ROOT (repo root) and INFRA_DIR (absolute) to be set by the caller.
# Provides: ensure_tools, fetch_libs, new_cluster_id, pid_alive, stop_pid,
# kill_pid, launch_java, and the variables POM and LIBS. The jar cache is the
# one scripts/kafka.sh uses ($INFRA_DIR/kafka/libs, or KAFKA_LIBS_DIR).

POM="$ROOT/scripts/kafka/pom.xml"
LIBS="${KAFKA_LIBS_DIR:-$INFRA_DIR/kafka/libs}"
case "$LIBS" in
  /*) ;;
  *) LIBS="$ROOT/$LIBS" ;;
esac

# Install Java and Maven with apt when they are missing (fresh Debian machine).
ensure_tools() {
  local pkgs=()
  command -v java >/dev/null 2>&1 || pkgs+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || pkgs+=(maven)
  command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
  if [ "${#pkgs[@]}" -gt 0 ]; then
    log "installing ${pkgs[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
}

# Fetch the broker jars unless the cache matches the current pom.
fetch_libs() {
  local stamp
  stamp="$(sha256sum "$POM" | cut -d' ' -f1)"
  if [ -f "$LIBS/.stamp" ] && [ "$(cat "$LIBS/.stamp")" = "$stamp" ]; then
    return 0
  fi
  ensure_tools
  log "fetching Kafka jars from Maven Central into $LIBS"
  local tmp="$LIBS.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  if ! mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$tmp.mvn.log" 2>&1; then
    cat "$tmp.mvn.log" >&2
    rm -rf "$tmp" "$tmp.mvn.log"
    log "maven failed to fetch the Kafka jars"
    exit 1
  fi
  rm -f "$tmp.mvn.log"
  echo "$stamp" >"$tmp/.stamp"
  rm -rf "$LIBS"
  mkdir -p "$(dirname "$LIBS")"
  mv "$tmp" "$LIBS"
}

# A random KRaft cluster id (URL-safe base64 of 16 bytes, not starting with '-').
new_cluster_id() {
  python3 -c '
import base64, uuid
while True:
    cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not cid.startswith("-"):
        print(cid)
        break
'
}

# The java command line of the broker tools, into the caller's `jvm` array.
# $1: log4j2 config file.
jvm_cmd() {
  jvm=(java "-Xms128m" "-Xmx${KAFKA_HEAP:-384m}" -XX:+UseG1GC -XX:ParallelGCThreads=1
    -XX:ConcGCThreads=1 -XX:CICompilerCount=2 -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$1" -cp "$LIBS/*")
}

# Write a log4j2 config sending the broker log to $2. $1: config path.
write_log4j() {
  cat >"$1" <<EOF
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $2
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
logger.server.name = kafka.server
logger.server.level = INFO
logger.kafka.name = kafka.Kafka
logger.kafka.level = INFO
EOF
}

# Exit status 0 when no socket on this host uses local port $1 (a listener, or an
# outgoing connection that took it as its ephemeral port). Without `ss`: 0.
port_free() {
  command -v ss >/dev/null 2>&1 || return 0
  [ -z "$(ss -Htan "( sport = :$1 )" 2>/dev/null)" ]
}

# Wait up to $2 seconds (default 20) for ports $1 (comma-separated) to be free.
wait_ports_free() {
  local ports="$1" wait_s="${2:-20}" p i busy
  for i in $(seq 1 "$((wait_s * 2))"); do
    busy=""
    for p in ${ports//,/ }; do
      port_free "$p" || busy="$busy $p"
    done
    [ -z "$busy" ] && return 0
    sleep 0.5
  done
  log "ports in use:$busy (another process, or an outgoing connection's ephemeral port)"
  return 1
}

pid_alive() {
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# Start `kafka.Kafka $2` in the background, detached, its PID written to $1.
# $3: log file, $4: log4j2 config.
launch_java() {
  local pidfile="$1" props="$2" logfile="$3" log4j="$4"
  local jvm=()
  jvm_cmd "$log4j"
  rm -f "$pidfile"
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$pidfile" \
    "${jvm[@]}" kafka.Kafka "$props" >>"$logfile" 2>&1 </dev/null &
  local i
  for i in $(seq 1 20); do
    [ -s "$pidfile" ] && return 0
    sleep 0.1
  done
}

# TERM the process in pidfile $1, KILL after $2 seconds (default 30).
stop_pid() {
  local pidfile="$1" wait_s="${2:-30}" pid i
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 "$((wait_s * 10))"); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid did not stop after ${wait_s}s; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
  fi
  rm -f "$pidfile"
}

# SIGKILL the process in pidfile $1 and wait until it is gone.
kill_pid() {
  local pidfile="$1" pid i
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  kill -KILL "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  rm -f "$pidfile"
}

# The project venv's python, when it has aiokafka; empty otherwise.
venv_python() {
  local py="$ROOT/.venv/bin/python"
  if [ -x "$py" ] && "$py" -c 'import aiokafka' 2>/dev/null; then
    echo "$py"
  fi
}
