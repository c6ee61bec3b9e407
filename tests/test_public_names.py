"""Tests use fibml's public names only: a test that reaches a private name pins an implementation
detail, and a refactoring that keeps the behaviour would break it."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
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


def test_the_check_sees_private_imports_and_attributes(tmp_path):
    sample = tmp_path / "test_sample.py"
    sample.write_text("from fibml.io import _json_default, read_stack\nfrom fibml import inference\n"
                      "import fibml.synth.montecarlo as mc\ninference._plan(1)\nmc._transport\nread_stack.__name__\n")
    assert _private_uses(sample) == ["line 1: from fibml.io import _json_default", "line 4: inference._plan",
                                     "line 5: mc._transport"]
