#!/usr/bin/env bash
# The test suite: ruff (lint and format), then pytest with the quick Hypothesis profile, once
# per Keras backend. Default: TensorFlow, then JAX. Other arguments go to pytest.
#
#   bash scripts/test.sh                    # TensorFlow and JAX (what .ci/run runs)
#   bash scripts/test.sh --backend torch    # the PyTorch run
#   bash scripts/test.sh --backend all      # all three
set -euo pipefail
cd "$(dirname "$0")/.."
backends=()
pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) backends+=("$2"); shift 2 ;;
    --backend=*) backends+=("${1#--backend=}"); shift ;;
    *) pytest_args+=("$1"); shift ;;
  esac
done
[ ${#backends[@]} -gt 0 ] || backends=(tensorflow jax)
if [ "${backends[*]}" = "all" ]; then backends=(tensorflow jax torch); fi
bash scripts/bootstrap.sh "${backends[@]}"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export LOSSPLUG_PROFILE=${LOSSPLUG_PROFILE:-quick}
.venv/bin/ruff check .
.venv/bin/ruff format --check .
first=1
for backend in "${backends[@]}"; do
  echo "=== pytest on the $backend backend"
  marker=()
  # Tests that do not depend on the backend (listing, packaging, docs) run once.
  [ $first -eq 1 ] || marker=(-m "not backend_independent")
  KERAS_BACKEND=$backend .venv/bin/python -m pytest "${marker[@]}" "${pytest_args[@]}"
  first=0
done
