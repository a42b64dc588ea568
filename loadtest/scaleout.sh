#!/usr/bin/env bash
# Scale-out: the same broadcast through a pushfan cluster (ingest and W workers, plus one gateway
# with HAND_OFF=bus, on a real Redis and tansu) with W = 1 and then W = 2, driven by
# pushfan-loadtest in attach mode.
# Prints each process's CPU over the broadcast and each worker's share of the encryptions (from
# its Prometheus counter), so CPU per push with one and two workers can be compared.
#
#   loadtest/scaleout.sh [SCENARIO]        # default: broadcast-1m.toml at SUBSCRIBERS=100000
#   WORKERS=1 SUBSCRIBERS=1000000 loadtest/scaleout.sh    # one cluster run at 1M
#   EXTRA_CONFIG=more.toml loadtest/scaleout.sh             # appended to every role's config
#   PUSHFAN=/path/to/other/pushfan loadtest/scaleout.sh    # another build of the roles, for A/B runs
#   HAND_OFF=bus loadtest/scaleout.sh                      # [worker] hand_off (default: direct)
#
# Needs: release builds of pushfan and pushfan-loadtest in $CARGO_TARGET_DIR/release, redis-server,
# tansu in ~/.cache/pushfan/tools/bin (scripts/setup.d/30-kafka.sh installs it), openssl, curl.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${PUSHFAN_CACHE_DIR:-$HOME/.cache/pushfan}
bin=${CARGO_TARGET_DIR:-$cache/target}/release
tansu=$cache/tools/bin/tansu
pushfan=${PUSHFAN:-$bin/pushfan}
scenario=${1:-$root/loadtest/scenarios/broadcast-1m.toml}
subscribers=${SUBSCRIBERS:-100000}
out=${OUT:-$root/loadtest/results}
# Unusual ports: other people's services may hold the usual ones.
redis_port=${REDIS_PORT:-16391}
tansu_port=${TANSU_PORT:-19193}
api_port=${API_PORT:-15052}
metrics_base=${METRICS_PORT_BASE:-19510}
hand_off=${HAND_OFF:-direct}

for tool in "$pushfan" "$bin/pushfan-loadtest" "$tansu"; do
  [ -x "$tool" ] || { echo "scaleout.sh: $tool is missing (see the header)" >&2; exit 1; }
done

run=$(mktemp -d "${TMPDIR:-/tmp}/pushfan-scaleout.XXXXXX")
infra=()
roles=()
cleanup() {
  local pid
  for pid in "${roles[@]:-}" "${infra[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP_RUN_DIR:-}" ] && echo "scaleout.sh: logs kept in $run" >&2 || rm -rf "$run"
}
trap cleanup EXIT

wait_port() {
  local i
  for i in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "scaleout.sh: nothing listens on 127.0.0.1:$1 after 20 s" >&2
  return 1
}

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$run" \
  --logfile "$run/redis.log" &
infra+=($!)
(cd "$run" && exec "$tansu" broker --listener-url "tcp://127.0.0.1:$tansu_port" \
  --advertised-listener-url "tcp://127.0.0.1:$tansu_port" --storage-engine sqlite://tansu.db \
  >tansu.log 2>&1) &
infra+=($!)
wait_port "$redis_port"
wait_port "$tansu_port"

# A CA the gateways trust from the start; the driver's fleet gets its certificate from it.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$run/ca-key.pem" -out "$run/ca.pem" -subj "/CN=pushfan load-test fleet CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
api_key=$(openssl rand -hex 24)
vapid=$("$pushfan" vapid generate | sed -n 's/^private_key = "\(.*\)"$/\1/p')

roles=()
for workers in ${WORKERS:-1 2}; do
  redis-cli -p "$redis_port" flushall >/dev/null
  config="$run/pushfan-$workers.toml"
  cat >"$config" <<EOF
[store]
backend = "redis"
redis_urls = ["redis://127.0.0.1:$redis_port/"]
shards = 12
[bus]
backend = "kafka"
brokers = "127.0.0.1:$tansu_port"
topic_prefix = "scaleout-$$-$workers."
create_topics_with_partitions = 6
[ingest]
listen = "127.0.0.1:$api_port"
[[tenants]]
name = "loadtest"
api_keys = ["$api_key"]
[vapid]
subject = "mailto:loadtest@pushfan.invalid"
validity_secs = 3600
[[vapid.keys]]
id = 1
private_key = "$vapid"
[gateway]
extra_root_certs = ["$run/ca.pem"]
EOF
  if [ -n "${EXTRA_CONFIG:-}" ]; then cat "$EXTRA_CONFIG" >>"$config"; fi
  start_role() { # role metrics-port
    PUSHFAN__METRICS__LISTEN="127.0.0.1:$2" PUSHFAN__WORKER__HAND_OFF="$hand_off" RUST_LOG=warn NO_COLOR=1 \
      "$pushfan" --config "$config" "$1" 2>>"$run/$1-$workers.log" &
    roles+=($!)
  }
  roles=()
  start_role ingest "$metrics_base"
  wait_port "$api_port"
  worker_pids=()
  for w in $(seq 1 "$workers"); do
    start_role worker $((metrics_base + w))
    worker_pids+=($!)
  done
  # With the direct hand-off the workers deliver their own pages: no gateway process.
  gateway_pids=()
  if [ "$hand_off" = bus ]; then
    start_role gateway $((metrics_base + 9))
    gateway_pids+=($!)
  fi
  ingest_pid=${roles[0]}
  pid_args=()
  for pid in "${worker_pids[@]}" "$ingest_pid" "${gateway_pids[@]}"; do pid_args+=(--pid "$pid"); done

  echo "== $workers worker(s), $hand_off hand-off: pids workers ${worker_pids[*]}, ingest $ingest_pid, gateway ${gateway_pids[*]:-none}"
  OUT_DIR="$out/scaleout-$workers-workers"
  mkdir -p "$OUT_DIR"
  "$bin/pushfan-loadtest" "$scenario" --subscribers "$subscribers" --quiet --out "$OUT_DIR" \
    --attach "http://127.0.0.1:$api_port" --api-key "$api_key" "${pid_args[@]}" \
    --fleet-ca-cert "$run/ca.pem" --fleet-ca-key "$run/ca-key.pem"
  for w in $(seq 1 "$workers"); do
    encrypted=$(curl -s "http://127.0.0.1:$((metrics_base + w))/metrics" |
      awk '/^pushfan_worker_encrypted_total/ {print $2}')
    echo "   worker $w (pid ${worker_pids[$((w - 1))]}): encrypted ${encrypted:-0}"
  done
  for pid in "${roles[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${roles[@]}"; do wait "$pid" 2>/dev/null || true; done
  roles=()
done
