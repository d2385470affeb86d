#!/usr/bin/env bash
# The main job end to end, offline, on the bundled sample data, ending in a GAP figure.
# Usage: scripts/quickstart.sh [VENV_BIN]
set -euo pipefail
BIN=${1:-.venv/bin}
OUT=${QUICKSTART_DIR:-quickstart}
"$BIN/delfx" sample-data "$OUT/data" --overwrite
# The gallery: the labelled training images, listed in train.csv (id,path,landmark_id), so the
# features' ids are the labels' ids. The default model is `auto`: the official DELF module when
# it is available offline, else the best installed offline model: xfeat (the torch extra, which
# `make` installs), else delf-hybrid (README, "Models"; docs/MODELS.md).
"$BIN/delfx" extract "$OUT/data/train.csv" "$OUT/features" --shards 4
"$BIN/delfx" verify "$OUT/features"
"$BIN/delfx" inspect "$OUT/features"
"$BIN/delfx" build-index "$OUT/features" "$OUT/index" --overwrite
# The query images (query.csv: landmarks and non-landmarks), extracted with the gallery's own
# model and recognised by retrieval + verification; then scored against their labels. Mutual
# nearest neighbours and a shortlist of 10 keep this short on 2 cores: xfeat's own LightGlue,
# the default matcher for its features, verifies better but took 25 s per query of 30 pairs
# here on a loaded 2-core machine (2026-12-02).
"$BIN/delfx" classify "$OUT/features" "$OUT/data/train.csv" "$OUT/data/query.csv" \
    --mode retrieval --index "$OUT/index" --matcher mnn --shortlist 10 \
    --out "$OUT/submission.csv" > "$OUT/classify.json"
"$BIN/delfx" evaluate "$OUT/submission.csv" "$OUT/data/query.csv" --report "$OUT/report" \
    > "$OUT/evaluation.json"
"$BIN/python" - "$OUT/evaluation.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["coverage"]
print(f"GAP {r['gap']:.3f}, top-1 accuracy {r['top1']:.3f} over {r['queries']} queries "
      f"({r['landmark_queries']} of landmarks, {r['non_landmark_queries']} not; "
      f"{c['answered']} answered); report in {sys.argv[1].rsplit('/', 1)[0]}/report")
PY
