#!/usr/bin/env bash
# Validates the manifests against the Kubernetes 1.30 schema (unknown fields are errors) and
# lints them. Installs the two PyPI tools into a venv outside the clone on first use.
set -euo pipefail
dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${PUSHFAN_CACHE_DIR:-$HOME/.cache/pushfan}/venv-k8s
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/yamllint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate yamllint
fi
"$venv/bin/yamllint" -s "$dir"/*.yaml
"$venv/bin/kubernetes-validate" --strict -k 1.30.0 "$dir"/*.yaml
