# Shared by the issue-8 benchmark scripts (sourced after they set OUT, PY, REPO and start).
#
# RESUME=1 continues an interrupted run of a script in the same <out_dir>: stages that finished
# (a marker in $OUT/.stages/) are skipped, and a training that has a checkpoint continues from it
# (train.py ckpt_path=<its run folder>) instead of starting again. So a long run can be split
# over several shorter sessions, e.g. on a GPU machine lent 10 minutes a command. Changing the
# settings between launches is the user's business: the markers do not record them.

# a fresh run (no RESUME=1) forgets the stages of any earlier run in $OUT
[[ "${RESUME:-0}" == 1 ]] || rm -rf "$OUT/.stages"

stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }

# stage NAME COMMAND...: run COMMAND; mark NAME finished when it succeeds; with RESUME=1 a NAME
# finished before is not run again.
stage() {
  local name=$1; shift
  if [[ "${RESUME:-0}" == 1 && -e "$OUT/.stages/$name" ]]; then stamp "$name: finished before, skipped"; return 0; fi
  "$@"
  mkdir -p "$OUT/.stages" && touch "$OUT/.stages/$name"
  stamp "$name"
}

# resume_from RUN_DIR: with RESUME=1 and a checkpoint in RUN_DIR, the train.py override that
# continues that run; else nothing.
resume_from() {
  if [[ "${RESUME:-0}" == 1 && -e "$1/checkpoints/last.ckpt" ]]; then echo "ckpt_path=$1"; fi
}

# train_segmentations NAME...: the same 2 kV single-voltage segmentation on each dataset
# $OUT/NAME, into $OUT/seg_NAME (log: $OUT/seg_NAME.log), with the overrides in SEG_ARGS;
# PARALLEL=1 trains them all at once (one GPU holds them).
train_segmentations() {
  local pids=() name
  for name in "$@"; do
    if [[ "${PARALLEL:-0}" == 1 ]]; then stage "segmentation trained on $name" _segmentation "$name" & pids+=($!)
    else stage "segmentation trained on $name" _segmentation "$name"; fi
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
}

_segmentation() {
  [[ "${RESUME:-0}" == 1 ]] || : > "$OUT/seg_$1.log"  # a continued run appends to its log
  # shellcheck disable=SC2046
  "$PY" "$REPO/train.py" experiment=single_voltage "data.voltages=[2]" data.data_dir="$OUT/$1" evaluate=false \
    logger=csv hydra.run.dir="$OUT/seg_$1" $(resume_from "$OUT/seg_$1") ${SEG_ARGS:-} >> "$OUT/seg_$1.log" 2>&1 \
    || { echo "FAILED: see $OUT/seg_$1.log"; return 1; }
}
