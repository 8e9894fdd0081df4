#!/usr/bin/env bash
# Create .venv (if needed) and install lossplug, every plugin under plugins/ and the
# test/docs tooling into it, with the Keras backends named as arguments (default:
# tensorflow jax). Idempotent; used by scripts/demo.sh, scripts/test.sh and .ci/run.
#
#   bash scripts/bootstrap.sh                    # TensorFlow (a core dependency) and JAX
#   bash scripts/bootstrap.sh tensorflow torch   # ... and PyTorch instead of JAX
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
backends=("$@")
[ ${#backends[@]} -gt 0 ] || backends=(tensorflow jax)
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
extras="test,docs"
for backend in "${backends[@]}"; do
  case "$backend" in
    tensorflow) ;;  # a dependency of lossplug itself
    jax) extras="$extras,jax" ;;
    torch) extras="$extras,torch,bench" ;;  # bench: pytorch-metric-learning, which needs torch
    *) echo "bootstrap.sh: unknown backend '$backend' (tensorflow, jax or torch)" >&2; exit 2 ;;
  esac
done
plugin_args=()
for dir in plugins/*/; do
  [ -f "$dir/pyproject.toml" ] && plugin_args+=(-e "$dir")
done
torch_pin=()
if [[ ",$extras," == *",torch,"* ]]; then
  # The CPU build: the package index's default torch wheel brings ~4 GB of CUDA libraries
  # (docs/backends.md has the measurements).
  torch_pin=("torch==${LOSSPLUG_TORCH_VERSION:-2.13.0}")
fi
.venv/bin/python -m pip install --quiet -e ".[$extras]" "${plugin_args[@]}" hatchling "${torch_pin[@]}"
