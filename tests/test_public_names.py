"""Tests, benchmarks and notebooks use fibml's public names only: code that reaches a private name
pins an implementation detail, and a refactoring that keeps the behaviour would break it."""

import ast
import json
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code" and not
                     "".join(c["source"]).lstrip().startswith(("!", "%")))


def _private_uses(path: Path) -> list[str]:
    tree = ast.parse(_notebook_code(path) if path.suffix == ".ipynb" else path.read_text())
    modules, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("fibml")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fibml"):
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
                modules.add(alias.asname or alias.name)  # a submodule (from fibml import inference) or a name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id in modules):
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return [f"line {line}: {use}" for line, use in sorted(found)]


def test_no_test_imports_a_private_name():
    offences = {p.name: uses for p in sorted(TESTS.glob("test_*.py")) if (uses := _private_uses(p))}
    assert not offences, offences


def test_benchmarks_and_notebooks_use_public_names_only():
    files = sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert len(files) > 10  # the folders were found
    offences = {p.name: uses for p in files if (uses := _private_uses(p))}
    assert not offences, offences


def test_notebook_cells_are_read(tmp_path):
    notebook = tmp_path / "tour.ipynb"
    cells = [{"cell_type": "markdown", "source": ["from fibml.io import _x"]},
             {"cell_type": "code", "source": ["import numpy as np\n", "from fibml.io import _json_default"]},
             {"cell_type": "code", "source": ["!pip install fibml"]}]
    notebook.write_text(json.dumps({"cells": cells}))
    assert _private_uses(notebook) == ["line 2: from fibml.io import _json_default"]


def test_the_check_sees_private_imports_and_attributes(tmp_path):
    sample = tmp_path / "test_sample.py"
    sample.write_text("from fibml.io import _json_default, read_stack\nfrom fibml import inference\n"
                      "import fibml.synth.montecarlo as mc\ninference._plan(1)\nmc._transport\nread_stack.__name__\n")
    assert _private_uses(sample) == ["line 1: from fibml.io import _json_default", "line 4: inference._plan",
                                     "line 5: mc._transport"]
