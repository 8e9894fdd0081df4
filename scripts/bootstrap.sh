#!/usr/bin/env bash
# Create .venv (if needed) and install lossplug, every plugin under plugins/ and the
# test/docs tooling into it. Idempotent; used by scripts/demo.sh, scripts/test.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
plugin_args=()
for dir in plugins/*/; do
  [ -f "$dir/pyproject.toml" ] && plugin_args+=(-e "$dir")
done
.venv/bin/python -m pip install --quiet -e ".[test,docs]" "${plugin_args[@]}" hatchling
