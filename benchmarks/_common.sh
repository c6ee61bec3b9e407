# Shared by the issue-8 benchmark scripts (sourced after they set OUT, PY, REPO and start).

stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }

# train_segmentations NAME...: the same 2 kV single-voltage segmentation on each dataset
# $OUT/NAME, into $OUT/seg_NAME (log: $OUT/seg_NAME.log), with the overrides in SEG_ARGS;
# PARALLEL=1 trains them all at once (one GPU holds them).
train_segmentations() {
  local pids=() name
  for name in "$@"; do
    if [[ "${PARALLEL:-0}" == 1 ]]; then _segmentation "$name" & pids+=($!); else _segmentation "$name"; fi
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
}

_segmentation() {
  "$PY" "$REPO/train.py" experiment=single_voltage "data.voltages=[2]" data.data_dir="$OUT/$1" evaluate=false \
    logger=csv hydra.run.dir="$OUT/seg_$1" ${SEG_ARGS:-} > "$OUT/seg_$1.log" 2>&1 || { echo "FAILED: see $OUT/seg_$1.log"; return 1; }
  stamp "segmentation trained on $1"
}
