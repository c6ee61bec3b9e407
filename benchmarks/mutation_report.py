"""Mutation testing of fibml's core modules: how many one-line mutations the tests catch.

mutmut (3.8.1, `pip install -e ".[mutation]"`) changes one operator, number, string or argument
of a function at a time and runs the tests that cover that function; a mutant the tests do not
fail on "survived". The configuration is pyproject.toml's [tool.mutmut]: which files, which test
files (the fast ones; tests marked `subprocess` are left out, since mutmut cannot see its mutants
inside other processes). This script runs mutmut on the modules asked for, then writes, per
module, the kill rate and every survivor with its diff: each is either killed by a new test or
explained in benchmarks/mutation_equivalents.yaml (a mutant that changes nothing a caller can see,
e.g. a dtype that numpy would choose anyway).

    python benchmarks/mutation_report.py                    # every module (about 1 h on 2 cores)
    python benchmarks/mutation_report.py --modules physics  # one or several (names below)
    python benchmarks/mutation_report.py --no-run           # the report of the last results
    python benchmarks/mutation_report.py --survivors        # rerun only the unexplained survivors
                                                            # of the last results (after new tests)

Not part of CI (too slow on 2 cores). The report goes to mutants/report.md (and stdout); the
figures belong, dated, in benchmarks/RESULTS.md. Run it from the repository root.
"""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = ROOT / "benchmarks" / "mutation_equivalents.yaml"
TARGET = 0.85  # issue 24: at least 85 % of the mutants killed in each core module

# module label -> (source file, mutmut mutant-name patterns). Of fibml/inference/ only the chunk
# planning is in scope (the rest is orchestration that the end-to-end tests run).
MODULES: dict[str, tuple[str, list[str]]] = {
    "anisotropy": ("fibml/metrics/anisotropy.py", ["fibml.metrics.anisotropy.*"]),
    "confusion": ("fibml/metrics/confusion.py", ["fibml.metrics.confusion.*"]),
    "domain": ("fibml/metrics/domain.py", ["fibml.metrics.domain.*"]),
    "morphology": ("fibml/metrics/morphology.py", ["fibml.metrics.morphology.*"]),
    "patches": ("fibml/data/patches.py", ["fibml.data.patches.*"]),
    "batch_augment": ("fibml/data/batch_augment.py", ["fibml.data.batch_augment.*"]),
    "registration": ("fibml/data/registration.py", ["fibml.data.registration.*"]),
    "repositioning": ("fibml/reconstruct/repositioning.py", ["fibml.reconstruct.repositioning.*"]),
    "geometry": ("fibml/geometry.py", ["fibml.geometry.*"]),
    "physics": ("fibml/synth/physics.py", ["fibml.synth.physics.*"]),
    "imaging": ("fibml/synth/imaging.py", ["fibml.synth.imaging.*"]),
    "chunk_planning": ("fibml/inference/chunks.py", ["fibml.inference.chunks.*"]),
    "sliding_window": ("fibml/sliding_window.py", ["fibml.sliding_window.*"]),
}

# mutmut's exit codes (mutmut/stats.py): 1 and 3 killed, 0 survived, 33 and 5 no test covers it
KILLED, SURVIVED, NO_TESTS = {1, 3}, {0}, {5, 33}
TIMEOUT = {-24, 24, 36, 152, 255}  # a mutant that hangs the tests is caught too


@dataclass
class Mutant:
    name: str
    status: str
    function: str = ""
    diff: list[str] = field(default_factory=list)
    reason: str | None = None  # why it is equivalent, from mutation_equivalents.yaml


def status_of(code) -> str:
    if code in KILLED:
        return "killed"
    if code in TIMEOUT:
        return "timeout"
    if code in SURVIVED:
        return "survived"
    if code in NO_TESTS:
        return "no tests"
    return "not run" if code is None else f"other ({code})"


def function_of(name: str) -> str:
    """The function a mutant name belongs to: fibml.x.x_foo__mutmut_3 -> foo, xǁCǁm -> C.m."""
    key = name.rsplit(".", 1)[-1].split("__mutmut_")[0]
    if key.startswith("xǁ"):
        return ".".join(part for part in key[2:].split("ǁ") if part)
    return key[2:]


def mutant_diff(source: str, name: str) -> list[str]:
    """The lines a mutant changes: its function in mutants/<file> against the original copy."""
    key = name.rsplit(".", 1)[-1]
    original = _function_source(source, key.split("__mutmut_")[0] + "__mutmut_orig")
    mutated = _function_source(source, key)
    if original is None or mutated is None:
        return []
    return [line for line in difflib.unified_diff(original, mutated, lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def _function_source(source: str, name: str) -> list[str] | None:
    lines = source.splitlines()
    pattern = re.compile(rf"^(\s*)(async\s+)?def {re.escape(name)}\(")
    for i, line in enumerate(lines):
        match = pattern.match(line)
        if not match:
            continue
        indent = len(match.group(1))
        body = [line.replace(name, "<function>")]
        for following in lines[i + 1:]:
            stripped = following.strip()
            if stripped and len(following) - len(following.lstrip()) <= indent and not stripped.startswith((")", "]", "}")):
                break
            body.append(following)
        while body and not body[-1].strip():
            body.pop()
        return body
    return None


def load_equivalents(path: Path = EQUIVALENTS) -> list[dict]:
    """Entries {module, function, mutant, reason[, original]}: `mutant` is the mutated line,
    stripped; `original`, the line it replaced, where the mutated line alone is ambiguous."""
    if not path.is_file():
        return []
    entries = yaml.safe_load(path.read_text()) or []
    for i, entry in enumerate(entries):
        missing = {"module", "function", "mutant", "reason"} - set(entry)
        if missing:
            raise ValueError(f"{path}: entry {i} lacks {', '.join(sorted(missing))}")
    return entries


def explain(module: str, mutant: Mutant, equivalents: list[dict]) -> str | None:
    """The reason of the entry for this mutant: same module and function, its mutated line among
    the added lines (and, when the entry gives one, its `original` line among the removed ones)."""
    added = [line[1:].strip() for line in mutant.diff if line.startswith("+")]
    removed = [line[1:].strip() for line in mutant.diff if line.startswith("-")]
    for entry in equivalents:
        if (entry["module"] == module and entry["function"] == mutant.function and entry["mutant"].strip() in added
                and ("original" not in entry or entry["original"].strip() in removed)):
            return entry["reason"]
    return None


def collect(module: str, root: Path = ROOT, equivalents: list[dict] | None = None) -> list[Mutant]:
    """The mutants of one module in mutants/ (after mutmut run), with diffs and explanations."""
    path, patterns = MODULES[module]
    meta = root / "mutants" / (path + ".meta")
    if not meta.is_file():
        return []
    codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
    source = (root / "mutants" / path).read_text()
    equivalents = load_equivalents() if equivalents is None else equivalents
    mutants = []
    for name, code in sorted(codes.items(), key=lambda kv: _natural(kv[0])):
        if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        mutant = Mutant(name, status_of(code), function_of(name))
        if mutant.status in ("survived", "no tests"):
            mutant.diff = mutant_diff(source, name)
            mutant.reason = explain(module, mutant, equivalents)
        mutants.append(mutant)
    return mutants


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def summary(mutants: list[Mutant]) -> dict:
    count = {s: sum(m.status == s for m in mutants) for s in ("killed", "timeout", "survived", "no tests", "not run")}
    explained = sum(m.reason is not None for m in mutants)
    ran = len(mutants) - count["not run"]
    caught = count["killed"] + count["timeout"]
    return count | {
        "mutants": len(mutants), "explained": explained,
        "kill rate": caught / ran if ran else float("nan"),
        "kill rate without equivalents": caught / (ran - explained) if ran > explained else float("nan"),
    }


def report(modules: list[str], root: Path = ROOT) -> str:
    equivalents = load_equivalents()
    rows, details = [], []
    for module in modules:
        mutants = collect(module, root, equivalents)
        s = summary(mutants)
        mark = "" if s["kill rate"] != s["kill rate"] else ("yes" if s["kill rate"] >= TARGET else "no")
        rows.append(f"| {module} | `{MODULES[module][0]}` | {s['mutants']} | {s['killed'] + s['timeout']} | "
                    f"{s['survived']} | {s['no tests']} | {s['explained']} | {s['kill rate']:.1%} | "
                    f"{s['kill rate without equivalents']:.1%} | {mark} |")
        open_ = [m for m in mutants if m.status in ("survived", "no tests") and m.reason is None]
        if open_:
            details.append(f"\n### {module}: {len(open_)} survivors not explained\n")
            for m in open_:
                details.append(f"- `{m.name}` ({m.status})\n" + "".join(f"      {line}\n" for line in m.diff))
    head = ("| module | file | mutants | killed | survived | no tests | of these equivalent | kill rate | "
            "without equivalents | >= 85 % |\n|---|---|---|---|---|---|---|---|---|---|\n")
    return "## Mutation testing\n\n" + head + "\n".join(rows) + "\n" + "".join(details)


def open_survivors(modules: list[str], root: Path = ROOT, equivalents: list[dict] | None = None) -> list[str]:
    """Names of the mutants of the last results that survived (or had no test) unexplained:
    what new tests should kill. mutmut reruns the mutants it is given by name, and the rest of
    its results stand (a killed mutant stays killed by stronger tests)."""
    equivalents = load_equivalents() if equivalents is None else equivalents
    return [m.name for module in modules for m in collect(module, root, equivalents)
            if m.status in ("survived", "no tests") and m.reason is None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", nargs="+", choices=sorted(MODULES), default=list(MODULES))
    parser.add_argument("--no-run", action="store_true", help="only report the results mutmut left in mutants/")
    parser.add_argument("--survivors", action="store_true",
                        help="rerun only the unexplained survivors of the last results in mutants/")
    parser.add_argument("--max-children", type=int, default=None, help="parallel mutants (default: the CPU count)")
    parser.add_argument("--report", type=Path, default=ROOT / "mutants" / "report.md")
    args = parser.parse_args(argv)
    patterns = [] if args.no_run else [p for m in args.modules for p in MODULES[m][1]]
    if patterns and args.survivors:
        patterns = open_survivors(args.modules)
        if not patterns:
            print("no unexplained survivors to rerun")
    if patterns:
        command = [sys.executable, "-m", "mutmut", "run", *patterns]
        if args.max_children:
            command[4:4] = ["--max-children", str(args.max_children)]
        started = time.perf_counter()
        print("running:", " ".join(command), flush=True)
        done = subprocess.run(command, cwd=ROOT)
        print(f"mutmut finished in {time.perf_counter() - started:.0f} s (exit {done.returncode})", flush=True)
        if done.returncode != 0:
            print("mutmut failed before testing the mutants (see its output above: usually a test that fails on the "
                  "unmutated code, or fails only under mutmut; run it in mutants/ with MUTANT_UNDER_TEST=stats)",
                  file=sys.stderr)
            return done.returncode
    text = report(args.modules)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)
    print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
