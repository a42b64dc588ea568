# Sourced by scripts/test: starts the Redis servers the store tests run against.
#
# - a single Redis on 127.0.0.1:6390  -> PUSHFAN_TEST_REDIS_URL
# - a 3-master Redis Cluster on 127.0.0.1:7101-7103 -> PUSHFAN_TEST_REDIS_CLUSTER_URLS
#
# Both keep nothing on disk (--save '' --appendonly no); their working directories live under
# $PUSHFAN_RUN_DIR. Shutdown is registered in cleanup_steps, so the servers stop when the test run
# exits. Ports are unusual on purpose: other processes on the machine may hold the default ones.
# Runs under `set -euo pipefail`.

apt_install redis-server

redis_single_port=6390
redis_cluster_ports=(7101 7102 7103)

# Refuses to start on a port somebody else already listens on, instead of testing against it.
redis_port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Waits until `redis-cli -p PORT CMD...` prints something containing PATTERN (at most ~10 s).
redis_wait_for() {
  local port=$1 pattern=$2
  shift 2
  local _ reply
  for _ in $(seq 100); do
    # Captured rather than piped into `grep -q`, whose early exit could fail the pipe under pipefail.
    reply=$(redis-cli -p "$port" "$@" 2>/dev/null || true)
    if [[ $reply == *"$pattern"* ]]; then return 0; fi
    sleep 0.1
  done
  echo "redis on port $port: no '$pattern' from '$*' after 10 s" >&2
  return 1
}

# Starts one server in the background with its files under $PUSHFAN_RUN_DIR/redis-PORT.
redis_start() {
  local port=$1
  shift
  local dir="$PUSHFAN_RUN_DIR/redis-$port"
  if ! redis_port_free "$port"; then
    echo "port $port is already in use; stop whatever listens there and rerun" >&2
    return 1
  fi
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" "$@"
  cleanup_steps+=("redis-cli -p $port shutdown nosave >/dev/null 2>&1")
  redis_wait_for "$port" PONG ping
}

log "redis: single node on $redis_single_port"
redis_start "$redis_single_port"

log "redis: 3-master cluster on ${redis_cluster_ports[*]}"
for port in "${redis_cluster_ports[@]}"; do
  redis_start "$port" --cluster-enabled yes --cluster-node-timeout 2000 \
    --cluster-config-file "$PUSHFAN_RUN_DIR/redis-$port/nodes.conf"
done
redis-cli --cluster create "${redis_cluster_ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
for port in "${redis_cluster_ports[@]}"; do
  redis_wait_for "$port" 'cluster_state:ok' cluster info
done

export PUSHFAN_TEST_REDIS_URL="redis://127.0.0.1:$redis_single_port/"
redis_cluster_urls=("${redis_cluster_ports[@]/#/redis://127.0.0.1:}")
PUSHFAN_TEST_REDIS_CLUSTER_URLS=$(IFS=,; echo "${redis_cluster_urls[*]}")
export PUSHFAN_TEST_REDIS_CLUSTER_URLS
