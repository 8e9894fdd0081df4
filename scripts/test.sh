#!/usr/bin/env bash
# The test suite: ruff (lint and format), then pytest with the quick Hypothesis profile.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export LOSSPLUG_PROFILE=${LOSSPLUG_PROFILE:-quick}
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
