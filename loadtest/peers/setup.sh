#!/usr/bin/env bash
# Installs the load-test peers (npm web-push, pywebpush, the Rust web-push crate) from their
# registries at the pinned versions, under ~/.cache/pushfan, outside the repository. Idempotent:
# a peer is reinstalled only when its lock or requirements file changed; cargo rebuilds only what
# changed. Usage: loadtest/peers/setup.sh [node-web-push|pywebpush|rust-web-push ...] (default: all)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${HOME}/.cache/pushfan"
peers=("$@")
[[ ${#peers[@]} -eq 0 ]] && peers=(node-web-push pywebpush rust-web-push)

need() {
  command -v "$1" >/dev/null || { echo "setup.sh: $1 not found; $2" >&2; exit 1; }
}

# True when $2 (a stamp file) records the same hash as the given inputs.
fresh() {
  local stamp="$1"; shift
  [[ -f "$stamp" ]] && [[ "$(cat "$@" | sha256sum)" == "$(cat "$stamp")" ]]
}
stamp() {
  local stamp="$1"; shift
  cat "$@" | sha256sum >"$stamp"
}

install_node() {
  need node "install Node.js 18 or later (apt-get install nodejs npm)"
  need npm "apt-get install npm"
  local src="$here/node-web-push" dst="$cache/peers/node-web-push"
  mkdir -p "$dst"
  if fresh "$dst/.stamp" "$src/package.json" "$src/package-lock.json" && [[ -d "$dst/node_modules/web-push" ]]; then
    echo "node-web-push: up to date"
    return
  fi
  cp "$src/package.json" "$src/package-lock.json" "$dst/"
  # ci: exactly the lock file's versions, checked against its integrity hashes.
  (cd "$dst" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --no-update-notifier)
  stamp "$dst/.stamp" "$src/package.json" "$src/package-lock.json"
  echo "node-web-push: installed web-push $(node -p "require('$dst/node_modules/web-push/package.json').version")"
}

install_python() {
  need python3 "install Python 3.9 or later"
  local src="$here/pywebpush" dst="$cache/peers/pywebpush"
  mkdir -p "$dst"
  if fresh "$dst/.stamp" "$src/requirements.txt" && [[ -x "$dst/venv/bin/python" ]]; then
    echo "pywebpush: up to date"
    return
  fi
  rm -rf "$dst/venv"
  python3 -m venv "$dst/venv"
  "$dst/venv/bin/pip" install --quiet --disable-pip-version-check -r "$src/requirements.txt"
  stamp "$dst/.stamp" "$src/requirements.txt"
  echo "pywebpush: installed pywebpush $("$dst/venv/bin/python" -c 'from importlib.metadata import version; print(version("pywebpush"))')"
}

install_rust() {
  need cargo "install Rust (rustup)"
  # --locked: the peer's own Cargo.lock, not whatever the registry serves today.
  CARGO_TARGET_DIR="$cache/target-peers" cargo build --release --locked \
    --manifest-path "$here/rust-web-push/Cargo.toml"
  echo "rust-web-push: built $cache/target-peers/release/pushfan-peer-rust-web-push"
}

for peer in "${peers[@]}"; do
  case "$peer" in
    node-web-push) install_node ;;
    pywebpush) install_python ;;
    rust-web-push) install_rust ;;
    *) echo "setup.sh: unknown peer '$peer' (node-web-push, pywebpush, rust-web-push)" >&2; exit 2 ;;
  esac
done
