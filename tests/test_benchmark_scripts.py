"""The issue-8 benchmark scripts' stages (benchmarks/_common.sh), run with a stand-in for python
that records its commands: a fresh run runs every stage, RESUME=1 skips the finished ones and
continues a training from its checkpoint, and a failed stage stops the script unmarked."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# records each command (one line); "fails" when the command names $FAIL_ON; a train.py run
# leaves a checkpoint in its hydra.run.dir, as a stopped training would
FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$*" >> "$CALLS"
[[ "$1" == "-" ]] && cat > /dev/null
for arg in "$@"; do
  case "$arg" in hydra.run.dir=*) [[ "$1" == */train.py ]] && mkdir -p "${arg#*=}/checkpoints" \
    && touch "${arg#*=}/checkpoints/last.ckpt";; esac
done
if [[ -n "${FAIL_ON:-}" && "$*" == *"$FAIL_ON"* ]]; then exit 1; fi
exit 0
"""


def run_script(name: str, out: Path, tmp_path: Path, **env) -> tuple[subprocess.CompletedProcess, list[str]]:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    calls = tmp_path / f"calls{len(list(tmp_path.glob('calls*')))}.txt"
    calls.touch()
    result = subprocess.run(["bash", str(REPO / "benchmarks" / name), str(out)], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": str(fake), "CALLS": str(calls), **env})
    return result, calls.read_text().splitlines()


@pytest.mark.parametrize("script, stages", [
    ("domain_adaptation.sh", 8),  # 2 domains, CycleGAN, translate, distances, 2 segmentations, scores
    ("ml_simulation.sh", 10),     # ANN, 2 x (Monte Carlo, preprocessed), CycleGAN, translate, 2 seg., scores
])
@pytest.mark.subprocess
def test_resume_skips_finished_stages_and_continues_the_training(script, stages, tmp_path):
    out = tmp_path / "out"
    gan_dir = "cyclegan"  # both scripts' CycleGAN run folder
    # the CycleGAN stage fails (a stopped session): the stages before it are marked, it is not
    failed, calls = run_script(script, out, tmp_path, FAIL_ON=f"hydra.run.dir={out}/{gan_dir}")
    assert failed.returncode != 0
    assert "ckpt_path=" not in calls[-1]  # a first launch starts the CycleGAN from scratch
    done = sorted(p.name for p in (out / ".stages").iterdir())
    assert "CycleGAN trained" not in done and len(done) == len(calls) - 1

    resumed, calls = run_script(script, out, tmp_path, RESUME="1")
    assert resumed.returncode == 0, resumed.stderr
    # one command a stage left, and ml_simulation's scoring is two (evaluate.py, the overlap)
    assert len(calls) == stages - len(done) + (script == "ml_simulation.sh")
    assert f"ckpt_path={out}/{gan_dir}" in calls[0].split()  # the CycleGAN continues from its checkpoint
    assert "finished before, skipped" in resumed.stdout
    assert len(list((out / ".stages").iterdir())) == stages

    # a fresh run (no RESUME) forgets the markers and starts every training anew
    fresh, calls = run_script(script, out, tmp_path)
    assert fresh.returncode == 0 and "skipped" not in fresh.stdout
    trainings = [c for c in calls if c.split()[0].endswith("train.py")]
    assert len(trainings) == 3 + (script == "ml_simulation.sh")  # (ANN,) CycleGAN, 2 segmentations
    assert not any("ckpt_path=" in c for c in trainings)
