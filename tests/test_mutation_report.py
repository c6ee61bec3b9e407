"""benchmarks/mutation_report.py: reading mutmut's results, the diff of each survivor, kill rates,
and the explained equivalent mutants (mutmut itself is not run here: too slow for CI)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("mutation_report", REPO / "benchmarks" / "mutation_report.py")
mutation_report = importlib.util.module_from_spec(spec)
sys.modules["mutation_report"] = mutation_report  # its dataclass looks its module up there
spec.loader.exec_module(mutation_report)

# what mutmut writes into mutants/fibml/synth/physics.py: the original and every mutant of a function
SOURCE = '''
def x_double__mutmut_orig(value):
    """Twice the value."""
    return value * 2


def x_double__mutmut_1(value):
    """Twice the value."""
    return value / 2


def x_double__mutmut_2(value):
    """Twice the value."""
    return value * 3


class Material:
    def xǁMaterialǁscale__mutmut_orig(self, value):
        total = sum(
            [value, 1.0],
        )
        return total

    def xǁMaterialǁscale__mutmut_1(self, value):
        total = sum(
            [value, 2.0],
        )
        return total
'''


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "mutants" / "fibml" / "synth"
    folder.mkdir(parents=True)
    (folder / "physics.py").write_text(SOURCE)
    codes = {"fibml.synth.physics.x_double__mutmut_1": 1, "fibml.synth.physics.x_double__mutmut_2": 0,
             "fibml.synth.physics.xǁMaterialǁscale__mutmut_1": 0, "fibml.synth.physics.x_other__mutmut_1": 33,
             "fibml.synth.physics.x_other__mutmut_2": -24}
    (folder / "physics.py.meta").write_text(json.dumps({"exit_code_by_key": codes}))
    return tmp_path


def test_diffs_name_the_changed_lines_of_functions_and_methods():
    assert mutation_report.mutant_diff(SOURCE, "fibml.synth.physics.x_double__mutmut_2") == [
        "-    return value * 2", "+    return value * 3"]
    assert mutation_report.mutant_diff(SOURCE, "fibml.synth.physics.xǁMaterialǁscale__mutmut_1") == [
        "-            [value, 1.0],", "+            [value, 2.0],"]  # a method, its call spanning lines
    assert mutation_report.function_of("fibml.synth.physics.xǁMaterialǁscale__mutmut_1") == "Material.scale"
    assert mutation_report.function_of("fibml.x.x__reaching__mutmut_3") == "_reaching"


def test_kill_rate_counts_timeouts_as_caught_and_equivalents_apart(results):
    equivalents = [{"module": "physics", "function": "double", "mutant": "return value * 3", "reason": "test"}]
    mutants = mutation_report.collect("physics", results, equivalents)
    status = {m.name.rsplit(".", 1)[1]: m.status for m in mutants}
    assert status == {"x_double__mutmut_1": "killed", "x_double__mutmut_2": "survived",
                      "xǁMaterialǁscale__mutmut_1": "survived", "x_other__mutmut_1": "no tests",
                      "x_other__mutmut_2": "timeout"}
    assert [m.reason for m in mutants if m.status == "survived"] == ["test", None]
    s = mutation_report.summary(mutants)
    assert (s["mutants"], s["killed"], s["timeout"], s["survived"], s["no tests"], s["explained"]) == (5, 1, 1, 2, 1, 1)
    assert s["kill rate"] == pytest.approx(2 / 5) and s["kill rate without equivalents"] == pytest.approx(2 / 4)


def test_the_survivors_to_rerun_are_the_unexplained_ones(results):
    equivalents = [{"module": "physics", "function": "double", "mutant": "return value * 3", "reason": "test"}]
    assert mutation_report.open_survivors(["physics"], results, equivalents) == [
        "fibml.synth.physics.x_other__mutmut_1", "fibml.synth.physics.xǁMaterialǁscale__mutmut_1"]
    assert mutation_report.open_survivors(["imaging"], results, equivalents) == []  # no results for it


def test_an_entry_can_name_the_line_it_replaced():
    mutant = mutation_report.Mutant("m", "survived", "f", diff=["-    x = f(a,", "-          b=2)", "+    x = f(a,", "+          )"])
    entry = {"module": "physics", "function": "f", "mutant": ")", "reason": "r"}
    assert mutation_report.explain("physics", mutant, [entry | {"original": "b=2)"}]) == "r"
    assert mutation_report.explain("physics", mutant, [entry | {"original": "c=3)"}]) is None
    assert mutation_report.explain("domain", mutant, [entry]) is None


def test_the_equivalents_file_is_complete_and_matches_modules():
    entries = mutation_report.load_equivalents()
    assert entries and {e["module"] for e in entries} <= set(mutation_report.MODULES)
    assert all(e["reason"].strip() for e in entries)


def test_an_entry_without_a_reason_is_refused(tmp_path):
    path = tmp_path / "equivalents.yaml"
    path.write_text(yaml.safe_dump([{"module": "physics", "function": "f", "mutant": "x = 1"}]))
    with pytest.raises(ValueError, match="entry 0 lacks reason"):
        mutation_report.load_equivalents(path)
