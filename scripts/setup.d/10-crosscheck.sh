# Sourced by scripts/test. Installs the independent Web Push implementations that
# crates/webpush/tests/crosscheck.rs checks pushfan against: a Python venv (http_ece, pywebpush,
# py_vapid, cryptography, PyJWT) and npm's web-push, both pinned in crates/webpush/tests/crosscheck/.
#
# Both live outside the clone, under $PUSHFAN_CACHE_DIR/crosscheck, and are rebuilt only when
# their pins (or the interpreter) change: a stamp file holds the hash they were built from.

crosscheck_src="$root/crates/webpush/tests/crosscheck"
crosscheck_dir="$PUSHFAN_CACHE_DIR/crosscheck"
mkdir -p "$crosscheck_dir"

command -v python3 >/dev/null || apt_install python3 python3-venv
command -v npm >/dev/null || apt_install nodejs npm

# Concurrent runs of scripts/test on one machine share this cache: build it under a lock.
exec {crosscheck_lock}>"$crosscheck_dir/.lock"
flock "$crosscheck_lock"

crosscheck_venv="$crosscheck_dir/venv"
crosscheck_want=$({ python3 --version; cat "$crosscheck_src/requirements.txt"; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$crosscheck_venv/.stamp" 2>/dev/null)" != "$crosscheck_want" ]; then
  log "crosscheck: creating the Python venv"
  rm -rf "$crosscheck_venv"
  python3 -m venv "$crosscheck_venv"
  "$crosscheck_venv/bin/pip" install --quiet --disable-pip-version-check -r "$crosscheck_src/requirements.txt"
  echo "$crosscheck_want" >"$crosscheck_venv/.stamp"
fi

crosscheck_node="$crosscheck_dir/node"
crosscheck_want=$({ node --version; cat "$crosscheck_src/package.json" "$crosscheck_src/package-lock.json"; } \
  | sha256sum | cut -d' ' -f1)
if [ "$(cat "$crosscheck_node/.stamp" 2>/dev/null)" != "$crosscheck_want" ]; then
  log "crosscheck: npm ci"
  rm -rf "$crosscheck_node"
  mkdir -p "$crosscheck_node"
  cp "$crosscheck_src/package.json" "$crosscheck_src/package-lock.json" "$crosscheck_node/"
  (cd "$crosscheck_node" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
  echo "$crosscheck_want" >"$crosscheck_node/.stamp"
fi

flock --unlock "$crosscheck_lock"
exec {crosscheck_lock}>&-

export PUSHFAN_CROSSCHECK_PYTHON="$crosscheck_venv/bin/python"
export PUSHFAN_CROSSCHECK_NODE_PATH="$crosscheck_node/node_modules"
