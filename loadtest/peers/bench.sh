#!/usr/bin/env bash
# Runs peers end to end against a fresh simulated push service each (VAPID verified and every body
# decrypted), printing the peer's JSON report and pushsim's statistics, and failing unless every
# push was answered 201, verified and decrypted.
#
#   loadtest/peers/bench.sh [--count N] [--payload-bytes N] [--concurrency C ...] [PEER ...] [-- ARGS]
#
# ARGS after `--` go to every peer as they are (e.g. `-- --threads 2` for rust-web-push).
# --sample N has pushsim verify VAPID and decrypt one push in N (default 1: every push), so that
# pushes/s shows the peer's pace rather than the sink's; the check then expects exactly the
# sampled pushes verified and decrypted, and every push answered 201.
# Peers default to all three; --concurrency may be repeated (default 100). Needs the peers
# installed (setup.sh) and pushsim built:
#   CARGO_TARGET_DIR=~/.cache/pushfan/target-peers cargo build --release -p pushfan-pushsim
# Each run's JSON report goes to stdout, and is also appended to $OUT when that is set.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pushsim="${PUSHSIM:-${HOME}/.cache/pushfan/target-peers/release/pushsim}"
python="${HOME}/.cache/pushfan/peers/pywebpush/venv/bin/python"
count=20000
sample=1
payload=1024
concurrencies=()
peers=()
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --count) count="$2"; shift 2 ;;
    --payload-bytes) payload="$2"; shift 2 ;;
    --sample) sample="$2"; shift 2 ;;
    --concurrency) concurrencies+=("$2"); shift 2 ;;
    node-web-push|pywebpush|rust-web-push) peers+=("$1"); shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "bench.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[[ ${#peers[@]} -eq 0 ]] && peers=(node-web-push pywebpush rust-web-push)
[[ ${#concurrencies[@]} -eq 0 ]] && concurrencies=(100)
[[ -x "$pushsim" ]] || { echo "bench.sh: no pushsim at $pushsim (see the header)" >&2; exit 2; }
[[ -x "$python" ]] || { echo "bench.sh: pywebpush venv missing; run setup.sh" >&2; exit 2; }

work="$(mktemp -d)"
out="${OUT:-/dev/null}"
sim_pid=""
cleanup() {
  [[ -n "$sim_pid" ]] && kill "$sim_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A throwaway VAPID key pair, raw and base64url as the contract wants.
read -r vapid_private vapid_public < <("$python" - <<'PY'
import base64
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
key = ec.generate_private_key(ec.SECP256R1())
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
print(b64(key.private_numbers().private_value.to_bytes(32, "big")),
      b64(key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)))
PY
)

free_port() {
  "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

failed=0
for peer in "${peers[@]}"; do
  for c in "${concurrencies[@]}"; do
    port="$(free_port)"
    "$pushsim" --tls --listen "127.0.0.1:$port" --subscribers "$count" \
      --vapid-sample "$sample" --decrypt-sample "$sample" \
      --export "$work/subs.jsonl" --cert-out "$work/ca.pem" >"$work/sim.out" 2>"$work/sim.err" &
    sim_pid=$!
    for _ in $(seq 300); do
      grep -q '^subscriptions:' "$work/sim.out" 2>/dev/null && break
      sleep 0.1
    done
    grep -q '^subscriptions:' "$work/sim.out" || { echo "bench.sh: pushsim did not start" >&2; cat "$work/sim.err" >&2; exit 1; }
    echo "== $peer, concurrency $c, $count pushes of $payload bytes, pushsim checks 1 in $sample ${extra[*]}" >&2
    set +e
    "$here/$peer/run" --subscriptions "$work/subs.jsonl" --ca "$work/ca.pem" \
      --vapid-private "$vapid_private" --vapid-public "$vapid_public" \
      --subject mailto:loadtest@pushfan.invalid --payload-bytes "$payload" --count "$count" \
      --concurrency "$c" "${extra[@]}" >"$work/peer.out"
    rc=$?
    set -e
    kill -INT "$sim_pid"
    wait "$sim_pid" || true
    sim_pid=""
    report="$(tail -n 1 "$work/peer.out")"
    echo "$report" | tee -a "$out"
    # pushsim prints its stats as Rust debug output; pull the counters that decide success.
    stats="$(tr -d ' \n' <"$work/sim.out")"
    verdict="$("$python" - "$report" "$stats" "$count" "$sample" <<'PY'
import json, re, sys
report, stats, count, sample = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
checked = -(-count // sample)  # pushsim checks requests 0, N, 2N, ...
def field(name):
    m = re.search(name + r":(\d+)", stats)
    return int(m.group(1)) if m else -1
m = re.search(r"statuses:\{([^}]*)\}", stats)
sim_statuses = dict(kv.split(":") for kv in m.group(1).rstrip(",").split(",") if kv) if m else {}
checks = {
    "peer accepted all": report["accepted"] == count and not report["errors"],
    "sim answered 201 to all": sim_statuses == {"201": str(count)},
    "vapid verified all sampled": field("vapid_verified") == checked and field("vapid_failures") == 0,
    "decrypted all sampled": field("decrypted") == checked and field("decrypt_failures") == 0
        and field("payload_mismatches") == 0,
}
print("ok" if all(checks.values()) else "FAILED: " + ", ".join(k for k, v in checks.items() if not v))
print(f"pushsim: statuses {sim_statuses}, vapid_verified {field('vapid_verified')}, "
      f"decrypted {field('decrypted')}; {count / report['wall_seconds']:.0f} pushes/s, "
      f"{count / report['cpu_seconds']:.0f} pushes per sender CPU-second", file=sys.stderr)
PY
)"
    echo "$peer c=$c: $verdict (peer exit $rc)" >&2
    [[ "$verdict" == ok && $rc -eq 0 ]] || failed=1
  done
done
exit "$failed"
