"""benchmarks/volume_spread.py: reading evaluate.py's comparison.csv, the paired statistics, and
reusing a volume already scored instead of scoring it again."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("volume_spread", REPO / "benchmarks" / "volume_spread.py")
volume_spread = importlib.util.module_from_spec(spec)
spec.loader.exec_module(volume_spread)


def write_comparison(path: Path, mp: tuple[float, float], mds: tuple[float, float],
                     solid: tuple[float, float] = (0.119, 0.1215)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        'measure,ground truth,"ResidualUNet 2d, 1 kV","LateFusion 2d, 1+2+4 kV"\n'
        f"MP %,0.0,{mp[0]},{mp[1]}\n"
        f"MDS,1.0,{mds[0]},{mds[1]}\n"
        f"solid fraction,0.12,{solid[0]},{solid[1]}\n"
        "tau z,1.0,,\n"
    )


def test_paired_differences_count_wins_in_the_right_direction(tmp_path):
    # late fusion against 1 kV: MP lower by 0.1 and 0.3 (better twice), MDS lower by 0.01 twice (worse),
    # solid fraction (truth 0.12) higher both times but nearer the truth once
    write_comparison(tmp_path / "a.csv", (0.6, 0.5), (0.98, 0.97), solid=(0.118, 0.1215))
    write_comparison(tmp_path / "b.csv", (0.9, 0.6), (0.99, 0.98), solid=(0.119, 0.125))
    volumes = [volume_spread.read_comparison(tmp_path / f) for f in ("a.csv", "b.csv")]
    assert volumes[1]["LateFusion 2d, 1+2+4 kV"] == {"MP %": 0.6, "MDS": 0.98, "solid fraction": 0.125}  # no empty tau
    methods = ["ResidualUNet 2d, 1 kV", "LateFusion 2d, 1+2+4 kV"]
    text = volume_spread.spread_tables(volumes, methods, methods[0], ["MP %", "MDS", "solid fraction"])
    assert "| LateFusion 2d, 1+2+4 kV | 0.55 ± 0.071 | 0.975 ± 0.0071 | 0.1232 ± 0.0025 |" in text
    # d = -0.1, -0.3: mean -0.2, se 0.1, t = -2 with 1 degree of freedom: p = 0.2952
    assert ("| LateFusion 2d, 1+2+4 kV | -0.2 ± 0.1, 2/2, p 0.3 | -0.01 ± 0, 0/2, p nan "
            "| +0.00475 ± 0.0013, 1/2, p 0.16 |") in text
    volume_spread.plot_differences(volumes, methods, methods[0], ["MP %", "MDS"], tmp_path / "fig" / "d.png")
    assert (tmp_path / "fig" / "d.png").read_bytes()[:4] == b"\x89PNG"
    assert volume_spread.better(volumes, methods[1], methods[0], "solid fraction").tolist() == [True, False]


def test_a_scored_volume_is_read_again_and_a_changed_request_scores_anew(tmp_path, monkeypatch):
    data, run = tmp_path / "s1", tmp_path / "run"
    data.mkdir()
    run.mkdir()
    folder = tmp_path / "work" / "s1"
    write_comparison(folder / "comparison.csv", (0.6, 0.5), (0.98, 0.97))
    request = {"data_dir": str(data.resolve()), "runs": [str(run.resolve())], "evaluate_args": []}
    (folder / "volume_spread.json").write_text(json.dumps(request))
    calls = []
    monkeypatch.setattr(volume_spread.subprocess, "run", lambda command, **kw: calls.append(command))
    scores = volume_spread.score_volume(data, [run], folder, [])
    assert calls == [] and scores["ResidualUNet 2d, 1 kV"]["MP %"] == 0.6
    # other evaluate.py arguments: the volume is scored again, which needs its ground truth
    with pytest.raises(FileNotFoundError, match="s1: no labels.tif"):
        volume_spread.score_volume(data, [run], folder, ["inference.sw_batch_size=8"])
    (data / "labels.tif").touch()
    volume_spread.score_volume(data, [run], folder, ["inference.sw_batch_size=8"])
    assert len(calls) == 1 and f"data_dir={data.resolve()}" in calls[0] and "inference.sw_batch_size=8" in calls[0]
    assert f"ckpt_path=[{run.resolve()}]" in calls[0] and f"hydra.run.dir={folder.resolve()}" in calls[0]
