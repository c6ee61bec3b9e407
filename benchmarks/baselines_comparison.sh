#!/usr/bin/env bash
# Issue 5's quality bar, on fibml's own synthetic data, through the user's command (evaluate.py):
#  1. the three-phase electrode imaged by two detectors (random-forest-multi-detector.txt, Fig. 1):
#     double threshold, triple threshold (SE2 alone), random forest on SE2 alone, on in-lens
#     alone and on both (+ their difference), ranked by the average weighted error awe;
#  2. k-means (k = 3) on the multi-voltage nanoporous gold at 1, 2 and 4 kV (Table 3's trend:
#     worse with voltage as the shine-through grows).
# Seed 0 volumes give the sparse training labels (4 slices, 2000 pixels per phase each), seed 1
# volumes are scored whole (split=all): no label of a scored slice is ever seen.
#
#   bash benchmarks/baselines_comparison.sh [out_dir]
#   SYNTH_ARGS="shape=[64,96,96]" bash benchmarks/baselines_comparison.sh /tmp/quick   # a quick check
set -euo pipefail
OUT=${1:-logs/baselines_comparison}
PY=${PYTHON:-python}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
start=$(date +%s)

for seed in 0 1; do
  "$PY" -m fibml.synth generator=electrode out="$OUT/data/electrode_$seed" seed=$seed overwrite=true ${SYNTH_ARGS:-}
  "$PY" -m fibml.synth out="$OUT/data/hnpg_$seed" seed=$seed overwrite=true ${SYNTH_ARGS:-}
done
echo "data generated ($(( $(date +%s) - start )) s)"

"$PY" "$REPO/evaluate.py" hydra.run.dir="$OUT/electrode" data_dir="$OUT/data/electrode_1" split=all \
  baseline_training.data_dir="$OUT/data/electrode_0" save_predictions=false \
  "method=[double_threshold,triple_threshold,random_forest]" \
  "method.double_threshold.inputs=[[se2_1kV]]" "method.triple_threshold.inputs=[[se2_1kV]]"
echo "electrode baselines done ($(( $(date +%s) - start )) s)"

"$PY" "$REPO/evaluate.py" hydra.run.dir="$OUT/hnpg" data_dir="$OUT/data/hnpg_1" split=all \
  baseline_training.data_dir="$OUT/data/hnpg_0" save_predictions=false method=kmeans
echo "total $(( $(date +%s) - start )) s"
