"""Hyperparameter sweeps: python train.py -m hparams_search=late_fusion_optuna, with a trial that fails."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import FAST_TRAIN, compose_config, small_net

REPO = Path(__file__).resolve().parent.parent

# The shipped sweep, with one hyperparameter given a value that cannot work (dropout 1.5): with
# this sampler seed the first trial draws 0.0 (runs) and the second 1.5 (fails at construction).
FAILING = """# @package _global_
defaults:
  - late_fusion_optuna
hydra:
  sweeper:
    sampler:
      seed: 2
    params:
      model.net.branch.dropout: choice(0.0, 1.5)
"""


def test_sweep_config_composes(tmp_path):
    cfg = compose_config("train", ["hparams_search=late_fusion_optuna"], tmp_path)
    assert cfg.optimized_metric == "val/mds" and "LateFusion" in cfg.model.net._target_


@pytest.mark.slow
@pytest.mark.smoke
@pytest.mark.subprocess
def test_sweep_of_two_trials_survives_a_failing_one(tiny_dataset, tmp_path):
    (tmp_path / "cfg" / "hparams_search").mkdir(parents=True)
    (tmp_path / "cfg" / "hparams_search" / "failing.yaml").write_text(FAILING)
    fast = [o for o in small_net(FAST_TRAIN, "late_fusion") if not o.startswith(("inference", "trainer.max_epochs"))]
    cmd = [
        sys.executable, str(REPO / "train.py"), "-m", f"hydra.searchpath=[file://{tmp_path / 'cfg'}]",
        "hparams_search=failing", "hydra.sweeper.n_trials=2", "debug=fdr", f"data.data_dir={tiny_dataset}",
        "evaluate=false", f"hydra.sweep.dir={tmp_path / 'sweep'}", *fast,
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = tmp_path / "sweep"
    assert "Failed experiment" in done.stdout + done.stderr
    error = (sweep / "1" / "error.txt").read_text()  # the failed trial left its traceback
    assert "dropout must be in [0, 1), got 1.5" in error
    assert not (sweep / "0" / "error.txt").exists()
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"]["model.net.branch.dropout"] == 0.0
    assert 0.0 <= results["best_value"] <= 1.0  # val/mds of the trial that ran
