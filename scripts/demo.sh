#!/usr/bin/env bash
# The main demo: trains on scikit-learn's bundled digits and writes PNG figures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
.venv/bin/lossplug list
.venv/bin/lossplug demo "$@"
