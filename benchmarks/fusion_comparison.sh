#!/usr/bin/env bash
# Issue 3's quality bar, Tables 2 and 3 of multi-voltage-multimodal-fusion.txt on synthetic data:
# ML-singleV at 1, 2 and 4 kV, early, intermediate and late fusion (the paper's procedure:
# branches = the single-voltage models, then the ensemble), all scored with k-means (k = 3) on
# the same held-out synthetic volume (another seed of the default generator, every slice).
# Volumes: seed 0 trains the networks, seed 1 scores them all, seed 2 fits the late-fusion
# ensemble (stacking: the frozen branches are overconfident on their own training volume, the
# 4 kV one most of all, so an ensemble fitted there over-weights them; STACKING=0 fits it on seed 0).
#
#   bash benchmarks/fusion_comparison.sh [out_dir] [hydra overrides for every training ...]
#   PARALLEL=1 bash benchmarks/fusion_comparison.sh logs/fusion trainer=gpu trainer.max_time=00:00:05:00
#
# SYNTH_ARGS="shape=[96,96,96] structure.coarse_wavelength_nm=100" makes small volumes (a quick check).
# VARIANT=_25d (or _3d) runs the 2.5D (3D) variant of every model.
# PARALLEL=1 trains the five independent models at once (one GPU holds them easily); the
# default trains them one after another. Late fusion is fitted twice on the frozen branches:
# the paper's 1x1-conv ensemble (late_fusion) and its voting layer (late_voting, section 3.1;
# experiment=late_fusion_voting, which keeps the epoch of lowest validation MP).
# Results: <out_dir>/comparison/{metrics,comparison}.md and comparison.png; each training run in
# <out_dir>/<name>/.
# SPREAD=N (default 4) also scores the single-voltage models and both late fusions on N more
# held-out volumes (seeds 3, 4, ...): <out_dir>/spread/spread.md and spread.png, the mean, spread
# and paired differences against the 1 kV model over the N + 1 volumes (benchmarks/volume_spread.py).
# SPREAD=0 skips it.
set -euo pipefail
OUT=${1:-logs/fusion_comparison}
shift || true
PY=${PYTHON:-python}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
start=$(date +%s)

"$PY" -m fibml.synth out="$OUT/data/train" seed=0 overwrite=true ${SYNTH_ARGS:-}
"$PY" -m fibml.synth out="$OUT/data/heldout" seed=1 overwrite=true ${SYNTH_ARGS:-}
ENSEMBLE_DATA="$OUT/data/train"
if [[ "${STACKING:-1}" == 1 ]]; then
  ENSEMBLE_DATA="$OUT/data/ensemble"
  "$PY" -m fibml.synth out="$ENSEMBLE_DATA" seed=2 overwrite=true ${SYNTH_ARGS:-}
fi

train() {  # name, overrides... (the training volume: $DATA, default seed 0)
  local name=$1; shift
  "$PY" "$REPO/train.py" "$@" data.data_dir="${DATA:-$OUT/data/train}" evaluate=false logger=csv \
    hydra.run.dir="$OUT/$name" "${EXTRA[@]}" > "$OUT/$name.log" 2>&1 \
    && echo "trained $name ($(( $(date +%s) - start )) s)" || { echo "FAILED $name: see $OUT/$name.log"; return 1; }
}
EXTRA=("$@")
V=${VARIANT:-}  # "" = 2D, _25d = 7 adjacent slices, _3d = 3D blocks
jobs_=(
  "single_1kV experiment=single_voltage$V data.voltages=[1]"
  "single_2kV experiment=single_voltage$V data.voltages=[2]"
  "single_4kV experiment=single_voltage$V data.voltages=[4]"
  "early_fusion experiment=early_fusion$V"
  "intermediate_fusion experiment=intermediate_fusion$V"
)
pids=()
for job in "${jobs_[@]}"; do
  # shellcheck disable=SC2086
  if [[ "${PARALLEL:-0}" == 1 ]]; then train $job & pids+=($!); else train $job; fi
done
for pid in "${pids[@]}"; do wait "$pid"; done

# late fusion as the paper trains it: the three single-voltage nets, frozen, and the ensemble
# (on the seed-2 volume with STACKING=1, the default)
BRANCHES="model.branch_ckpts=[$OUT/single_1kV,$OUT/single_2kV,$OUT/single_4kV]"
DATA="$ENSEMBLE_DATA" train late_fusion experiment=late_fusion$V "$BRANCHES" trainer.max_epochs=20
DATA="$ENSEMBLE_DATA" train late_voting experiment=late_fusion_voting$V "$BRANCHES" trainer.max_epochs=20

"$PY" "$REPO/evaluate.py" hydra.run.dir="$OUT/comparison" data_dir="$OUT/data/heldout" split=all \
  "ckpt_path=[$OUT/single_1kV,$OUT/single_2kV,$OUT/single_4kV,$OUT/early_fusion,$OUT/intermediate_fusion,$OUT/late_fusion,$OUT/late_voting]" \
  method=kmeans save_predictions=false

SPREAD=${SPREAD:-4}
if (( SPREAD > 0 )); then
  volumes=("$OUT/data/heldout")
  for (( seed = 3; seed < 3 + SPREAD; seed++ )); do
    "$PY" -m fibml.synth out="$OUT/data/heldout$seed" seed=$seed overwrite=true ${SYNTH_ARGS:-}
    volumes+=("$OUT/data/heldout$seed")
  done
  "$PY" "$REPO/benchmarks/volume_spread.py" --data-dirs "${volumes[@]}" --work "$OUT/spread" \
    --runs "$OUT/single_1kV" "$OUT/single_2kV" "$OUT/single_4kV" "$OUT/late_fusion" "$OUT/late_voting" \
    --measures "MP %" "MGP %" MDS "awe %" "solid fraction" --out "$OUT/spread/spread.md" \
    --figure "$OUT/spread/spread.png" --plot 3 4
fi
echo "total $(( $(date +%s) - start )) s"
