#!/usr/bin/env bash
# Issue 8's ML-simulation quality bar (cyclegan-simulation-domain-adaptation.txt, 2.3 and 3.1),
# through the user's commands:
#  1. the backscatter ANN on the Monte Carlo table (experiment=backscatter_ann);
#  2. structures seed 0 (training) and seed 1 (test), each imaged by the Monte Carlo (sMC) and
#     preprocessed by the ANN's depth weights;
#  3. a CycleGAN from the preprocessed to the Monte Carlo images of seed 0 (experiment=cyclegan_sim),
#     then the ML simulation of seed 0 (sML): its preprocessed images translated, and timed;
#  4. the same segmentation trained on sML and on sMC of seed 0, both scored on the Monte Carlo
#     images of seed 1, and the overlap (Dice) of their two predictions (the paper: MDS 0.83 on real data).
#
#   bash benchmarks/ml_simulation.sh <out_dir>
#   GAN_ARGS="trainer=gpu" SEG_ARGS="trainer=gpu" bash benchmarks/ml_simulation.sh /tmp/mlsim   # on a GPU
# PARALLEL=1 trains the two segmentations at once; RESUME=1 continues an interrupted run (see _common.sh). SYNTH_ARGS go to both structures (e.g. "shape=[64,96,96] structure.coarse_wavelength_nm=80
# structure.fine_wavelength_nm=24"), MC_ARGS to the Monte Carlo runs (e.g. simulator.electrons_per_pixel=10).
# Slices smaller than the CycleGAN's 128 x 128 patch need GAN_ARGS="data.patch_size=64 data.stride=32".
set -euo pipefail
OUT=${1:?usage: ml_simulation.sh <out_dir>}
PY=${PYTHON:-python}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
start=$(date +%s)
source "$REPO/benchmarks/_common.sh"  # stamp, stage, resume_from, train_segmentations

# shellcheck disable=SC2046,SC2086
stage "backscatter ANN trained" "$PY" "$REPO/train.py" experiment=backscatter_ann logger=csv hydra.run.dir="$OUT/ann" \
  $(resume_from "$OUT/ann") ${ANN_ARGS:-}
[[ "${RESUME:-0}" == 1 ]] || rm -rf "$OUT"/mc_*.partial  # Monte Carlo slices of an earlier run
for seed in 0 1; do
  stage "Monte Carlo images of seed $seed" "$PY" -m fibml.synth out="$OUT/mc_$seed" seed=$seed "voltages=[2]" \
    simulator=montecarlo simulator.work_dir="$OUT/mc_$seed.partial" overwrite=true ${SYNTH_ARGS:-} ${MC_ARGS:-}
  stage "preprocessed images of seed $seed" "$PY" -m fibml.synth out="$OUT/pre_$seed" seed=$seed "voltages=[2]" \
    simulator=depth_weighted simulator.eta="$OUT/ann" overwrite=true ${SYNTH_ARGS:-}
done

# shellcheck disable=SC2046,SC2086
stage "CycleGAN trained" "$PY" "$REPO/train.py" experiment=cyclegan_sim data.source="$OUT/pre_0" data.target="$OUT/mc_0" \
  logger=csv hydra.run.dir="$OUT/cyclegan" $(resume_from "$OUT/cyclegan") ${GAN_ARGS:-}
stage "ML simulation of seed 0" "$PY" "$REPO/predict.py" task=translate ckpt_path="$OUT/cyclegan" input="$OUT/pre_0" \
  output="$OUT/sml_0" overwrite=true hydra.run.dir="$OUT/translate"

train_segmentations sml_0 mc_0
overlap() {
  "$PY" "$REPO/evaluate.py" "ckpt_path=[$OUT/seg_sml_0,$OUT/seg_mc_0]" data_dir="$OUT/mc_1" split=all \
    hydra.run.dir="$OUT/scores"
  "$PY" - "$OUT" <<'EOF'
import sys
from pathlib import Path

import numpy as np

from fibml.io import read_stack

scores = Path(sys.argv[1]) / "scores"
a, b = (read_stack(p)[0] == 1 for p in sorted(scores.glob("**/prediction*.tif"))[:2])
dice = [2 * (x & y).sum() / (x.sum() + y.sum()) for x, y in ((a, b), (~a, ~b))]
print(f"overlap of the two models' predictions on the Monte Carlo test volume: MDS {np.mean(dice):.4f}")
EOF
}
stage "scored" overlap
