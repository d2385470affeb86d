#!/usr/bin/env bash
# The main job end to end, offline, on the bundled sample data. Usage: scripts/quickstart.sh [VENV_BIN]
set -euo pipefail
BIN=${1:-.venv/bin}
OUT=${QUICKSTART_DIR:-quickstart}
"$BIN/delfx" sample-data "$OUT/data" --overwrite
