#!/usr/bin/env bash
# The test suite: ruff (lint and format), then pytest with the quick Hypothesis profile, once
# per Keras backend, its test files spread over LOSSPLUG_TEST_WORKERS processes (pytest-xdist,
# default 2: one per core of the CI machine; 0 runs them in this process). Other arguments go to
# pytest.
#
#   bash scripts/test.sh                    # what .ci/run runs: everything on TensorFlow, then
#                                           # the core's tests (tests/) on JAX
#   bash scripts/test.sh --backend jax      # everything (core and every plugin) on JAX
#   bash scripts/test.sh --backend torch    # everything on PyTorch
#   bash scripts/test.sh --backend all      # everything on all three (a release check)
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
default_run=0
if [ ${#backends[@]} -eq 0 ]; then backends=(tensorflow jax); default_run=1; fi
if [ "${backends[*]}" = "all" ]; then backends=(tensorflow jax torch); fi
# Every backend is installed whichever ones the tests run on: tests/test_cross_backend.py saves
# a model file on each backend and loads it on the other two, in fresh processes.
bash scripts/bootstrap.sh tensorflow jax torch
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export LOSSPLUG_PROFILE=${LOSSPLUG_PROFILE:-quick}
# --dist loadfile: a file's tests share one process (its module fixtures train models once)
workers=(-n "${LOSSPLUG_TEST_WORKERS:-2}" --dist loadfile)
.venv/bin/ruff check .
.venv/bin/ruff format --check .
first=1
for backend in "${backends[@]}"; do
  echo "=== pytest on the $backend backend"
  marker=()
  # Tests that do not depend on the backend (listing, packaging, docs) run once.
  [ $first -eq 1 ] || marker=(-m "not backend_independent")
  paths=()
  # The default run keeps CI short: the plugins' own suites run on TensorFlow there; their
  # conformance and tests on JAX and PyTorch are the --backend runs (docs/backends.md).
  [ $first -eq 1 ] || [ $default_run -eq 0 ] || [ ${#pytest_args[@]} -gt 0 ] || paths=(tests)
  KERAS_BACKEND=$backend .venv/bin/python -m pytest "${workers[@]}" "${marker[@]}" "${pytest_args[@]}" "${paths[@]}"
  first=0
done
