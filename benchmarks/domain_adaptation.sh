#!/usr/bin/env bash
# Issue 8's domain-adaptation quality bar (cyclegan-simulation-domain-adaptation.txt, Table 4),
# through the user's commands:
#  1. source domain: the fast forward model of structure seed 0 (2 kV); target domain: another
#     structure (seed 7) imaged with the artefacts of real FIB-SEM (artefacts=realistic), whose
#     labels are used for scoring only;
#  2. train a CycleGAN source -> target (experiment=cyclegan_da), translate the source dataset;
#  3. distances to the target domain (intensity histogram, power spectrum) before and after;
#  4. train the same segmentation on the source and on the adapted dataset and score both on the
#     target domain: MP / MDS against its labels and the anisotropy errors e_TPCF, e_LPF, e_D.
#
#   bash benchmarks/domain_adaptation.sh <out_dir> [GAN_ARGS="..."] [SEG_ARGS="..."]
#   GAN_ARGS="trainer=gpu" SEG_ARGS="trainer=gpu" bash benchmarks/domain_adaptation.sh /tmp/da   # paper settings on a GPU
# PARALLEL=1 trains the two segmentations at once; RESUME=1 continues an interrupted run (see _common.sh).
# Extra Hydra overrides for the CycleGAN run go in GAN_ARGS, for both segmentation runs in SEG_ARGS,
# for the datasets in SYNTH_ARGS (e.g. "shape=[64,96,96]").
set -euo pipefail
OUT=${1:?usage: domain_adaptation.sh <out_dir>}
PY=${PYTHON:-python}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
start=$(date +%s)
source "$REPO/benchmarks/_common.sh"  # stamp, stage, resume_from, train_segmentations

# shellcheck disable=SC2086
stage "source domain generated" "$PY" -m fibml.synth out="$OUT/source" seed=0 "voltages=[2]" overwrite=true ${SYNTH_ARGS:-}
# shellcheck disable=SC2086
stage "target domain generated" "$PY" -m fibml.synth out="$OUT/target" seed=7 "voltages=[2]" artefacts=realistic \
  overwrite=true ${SYNTH_ARGS:-}

# shellcheck disable=SC2046,SC2086
stage "CycleGAN trained" "$PY" "$REPO/train.py" experiment=cyclegan_da data.source="$OUT/source" data.target="$OUT/target" \
  logger=csv hydra.run.dir="$OUT/cyclegan" $(resume_from "$OUT/cyclegan") ${GAN_ARGS:-}
stage "source translated" "$PY" "$REPO/predict.py" task=translate ckpt_path="$OUT/cyclegan" input="$OUT/source" \
  output="$OUT/adapted" overwrite=true hydra.run.dir="$OUT/translate"

distances() {
  "$PY" - "$OUT" <<'EOF'
import sys
from pathlib import Path

from fibml.io import read_dataset
from fibml.metrics.domain import domain_distances

out = Path(sys.argv[1])
target = read_dataset(out / "target").images[2.0]
rows = []
for name in ("source", "adapted"):
    d = domain_distances(read_dataset(out / name).images[2.0], target)
    rows.append(f"| {name} -> target | {d['wasserstein']:.4f} | {d['jensen_shannon']:.4f} | {d['spectrum']:.3f} |")
table = "\n".join(["| distance | Wasserstein | Jensen-Shannon | spectrum (decades) |", "|---|---|---|---|", *rows])
(out / "domain_distances.md").write_text(table + "\n")
print(table)
EOF
}
stage "distances" distances

train_segmentations source adapted
stage "scored" "$PY" "$REPO/evaluate.py" "ckpt_path=[$OUT/seg_source,$OUT/seg_adapted]" data_dir="$OUT/target" \
  split=all save_predictions=false hydra.run.dir="$OUT/scores"
