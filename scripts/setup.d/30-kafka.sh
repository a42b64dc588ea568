# shellcheck shell=bash
# Kafka for the bus tests: installs tansu (a Kafka-compatible broker in Rust) once into the tool
# cache, starts it on loopback with sqlite storage in this run's directory, stops it on exit, and
# exports PUSHFAN_TEST_KAFKA_BROKERS. Sourced by scripts/test (set -euo pipefail; it provides log,
# cleanup_steps, PUSHFAN_CACHE_DIR and PUSHFAN_RUN_DIR).
#
# The fault-injection tests and the cluster test (crates/pushfan/tests/cluster.rs) need no broker:
# they use librdkafka's in-process mock cluster. tansu 0.6 cannot host the cluster test: its group
# coordinator keeps a crashed member as the group's leader, so that group never rebalances again.

tansu_version=0.6.0
tansu_bin="$PUSHFAN_CACHE_DIR/tools/bin/tansu"
tansu_port=${PUSHFAN_TANSU_PORT:-19092}

if [ ! -x "$tansu_bin" ]; then
  # The default features have no storage engine; a cold build takes 20-25 minutes, once.
  log "installing tansu $tansu_version into $PUSHFAN_CACHE_DIR/tools"
  cargo install tansu --version "$tansu_version" --locked --features dynostore,libsql \
    --root "$PUSHFAN_CACHE_DIR/tools" --target-dir "$PUSHFAN_CACHE_DIR/tansu-build"
fi

tansu_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$tansu_port") 2>/dev/null; }

if tansu_port_open; then
  echo "30-kafka.sh: 127.0.0.1:$tansu_port is already in use; set PUSHFAN_TANSU_PORT to a free port" >&2
  exit 1
fi

tansu_dir="$PUSHFAN_RUN_DIR/tansu"
mkdir -p "$tansu_dir"
# tansu resolves a sqlite path relative to its working directory, so it runs inside the run dir.
(
  cd "$tansu_dir"
  exec "$tansu_bin" broker \
    --listener-url "tcp://127.0.0.1:$tansu_port" \
    --advertised-listener-url "tcp://127.0.0.1:$tansu_port" \
    --storage-engine "sqlite://tansu.db" \
    >tansu.log 2>&1
) &
tansu_pid=$!
cleanup_steps+=("kill $tansu_pid 2>/dev/null; wait $tansu_pid 2>/dev/null")

# Ready within milliseconds normally; give it 10 s under load.
for _ in $(seq 1 100); do
  tansu_port_open && break
  if ! kill -0 "$tansu_pid" 2>/dev/null; then
    echo "30-kafka.sh: tansu exited during startup; its log:" >&2
    cat "$tansu_dir/tansu.log" >&2
    exit 1
  fi
  sleep 0.1
done
if ! tansu_port_open; then
  echo "30-kafka.sh: tansu did not accept connections on 127.0.0.1:$tansu_port within 10 s" >&2
  exit 1
fi

export PUSHFAN_TEST_KAFKA_BROKERS="127.0.0.1:$tansu_port"
# The bus benchmark reads tansu's CPU time from /proc to report the broker's cost separately.
export PUSHFAN_TEST_TANSU_PID=$tansu_pid
log "tansu $tansu_version listening on $PUSHFAN_TEST_KAFKA_BROKERS (pid $tansu_pid, log $tansu_dir/tansu.log)"
