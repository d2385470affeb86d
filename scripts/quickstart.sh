#!/usr/bin/env bash
# The main job end to end, offline, on the bundled sample data. Usage: scripts/quickstart.sh [VENV_BIN]
set -euo pipefail
BIN=${1:-.venv/bin}
OUT=${QUICKSTART_DIR:-quickstart}
"$BIN/delfx" sample-data "$OUT/data" --overwrite
# The default model is `auto`: the official DELF module when it is available offline, else the
# best installed offline model: xfeat (the torch extra, which `make` installs), else delf-hybrid
# (README, "Models"; docs/MODELS.md).
"$BIN/delfx" extract "$OUT/data/images" "$OUT/features" --shards 4
"$BIN/delfx" verify "$OUT/features"
"$BIN/delfx" inspect "$OUT/features"
