"""benchmarks/forward_model_vs_montecarlo.py runs in its quick mode and reports what it measured."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.subprocess
def test_quick_agreement_report(tmp_path):
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "forward_model_vs_montecarlo.py"), "--quick", "--voltages", "1",
         "--electrons", "10", "--out", str(out)], capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) == 1 and rows[0]["kV"] == "1.0"
    row = {k: float(v) for k, v in rows[0].items()}
    # Monte Carlo: gold far brighter than epoxy; 10 electrons per pixel keep its ceiling well below 1
    assert 0.3 < row["reference solid"] < 0.55 and 0.05 < row["reference pore"] < 0.25
    assert 0 < row["correlation"] < row["noise ceiling"] < 0.9
    depth = list(csv.DictReader(out.with_name("report_depth.csv").open()))
    assert [d["source"] for d in depth] == ["Monte Carlo", "fast"]
    assert float(depth[0]["0 nm"]) > float(depth[0]["20 nm"])  # epoxy over gold darkens it
    assert out.with_suffix(".png").stat().st_size > 10_000 and "faster than one Monte Carlo run" in result.stdout
