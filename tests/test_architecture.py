"""fibml's imports run one way, bottom to top (docs/architecture.md).

Reads the source of every module under fibml/ with ast (nothing is imported), imports inside
functions included: an import inside a function to dodge a cycle is still a cycle. Fails on an
import cycle between modules or between packages, and on an import from a lower layer into a
higher one, naming both modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fibml"

# Bottom to top; a module may import its own layer (without cycles) and the layers below.
# A name matches a module and everything under it; the longest match wins.
LAYERS: list[tuple[str, list[str]]] = [
    ("core", ["fibml", "fibml.config", "fibml.channels", "fibml.io", "fibml.geometry", "fibml.checkpoints"]),
    ("science", ["fibml.synth", "fibml.metrics", "fibml.nets", "fibml.sliding_window"]),
    ("learning", ["fibml.data", "fibml.tasks", "fibml.baselines", "fibml.reconstruct", "fibml.callbacks"]),
    ("inference", ["fibml.inference"]),
    ("report", ["fibml.report"]),
    ("pipelines", ["fibml.pipelines"]),
    ("commands", ["fibml.synth.__main__", "fibml.ingest"]),
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_imports(root: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """{module: {imported fibml module: line}} for every module under root; an import of a name
    from a module counts as an import of that module (or of the submodule, if the name is one)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                submodules = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in files]
                targets = submodules if len(submodules) == len(node.names) else [source, *submodules]
            else:
                continue
            for target in targets:
                while target and target not in files:  # `import fibml.io.tiff as t` names a module
                    target = target.rpartition(".")[0]
                if target and target != module and target.split(".")[0] == root.name:
                    found[target] = min(found.get(target, node.lineno), node.lineno)
        graph[module] = found
    return graph


def layer_of(module: str) -> int:
    best, level = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), index
    if level is None:
        raise KeyError(module)
    return level


def package_of(module: str) -> str:
    """The unit whose cycles count beside the modules': fibml.<package> or a top-level module."""
    parts = module.split(".")
    return ".".join(parts[:2])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of the directed graph, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        for target, line in sorted(targets.items()):
            if layer_of(target) > layer_of(module):
                problems.append(f"{module} (line {line}, layer {LAYERS[layer_of(module)][0]}) imports "
                                f"{target} (layer {LAYERS[layer_of(target)][0]}), a layer above it")
    return problems


def _package_graph(graph: dict[str, dict[str, int]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        for target in targets:
            # a package's __init__ lists its modules' public names: that is not a cycle with them
            if package_of(module) != package_of(target) and module != "fibml" and target != "fibml":
                packages.setdefault(package_of(module), set()).add(package_of(target))
    return packages


@pytest.fixture(scope="module")
def imports():
    return read_imports()


def test_every_module_has_a_layer(imports):
    unplaced = [m for m in imports if not any(m == p or m.startswith(p + ".") for _, ps in LAYERS for p in ps)]
    assert not unplaced, f"modules in no layer of LAYERS (and docs/architecture.md): {unplaced}"


def test_no_import_cycle_between_modules(imports):
    cycle = find_cycle({m: set(t) for m, t in imports.items()})
    assert cycle is None, "import cycle: " + " -> ".join(
        f"{a} (line {imports[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_no_import_cycle_between_packages(imports):
    packages = _package_graph(imports)
    cycle = find_cycle(packages)
    if cycle:
        witnesses = [next(f"{m} imports {t} (line {line})" for m, ts in sorted(imports.items())
                          for t, line in sorted(ts.items()) if package_of(m) == a and package_of(t) == b)
                     for a, b in zip(cycle, cycle[1:])]
        pytest.fail("packages import each other: " + " -> ".join(cycle) + "\n" + "\n".join(witnesses))


def test_imports_run_from_the_bottom_up(imports):
    problems = upward_imports(imports)
    assert not problems, "\n".join(problems)


# the reader itself, on a package written for the test


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "fibml"


def test_the_reader_sees_imports_inside_functions_and_relative_ones(tmp_path):
    package = _write(tmp_path, {
        "fibml/__init__.py": "",
        "fibml/io.py": "def f():\n    from fibml.synth import thickness\n",
        "fibml/synth/__init__.py": "",
        "fibml/synth/thickness.py": "from . import imaging\nfrom ..io import f\n",
        "fibml/synth/imaging.py": "import numpy as np\nimport fibml.synth.physics as physics\n",
        "fibml/synth/physics.py": "from fibml.synth import GENERATOR  # a name, not a module\n",
    })
    graph = read_imports(package)
    assert graph["fibml.io"] == {"fibml.synth.thickness": 2}
    assert graph["fibml.synth.thickness"] == {"fibml.synth.imaging": 1, "fibml.io": 2}
    assert graph["fibml.synth.imaging"] == {"fibml.synth.physics": 2}
    assert graph["fibml.synth.physics"] == {"fibml.synth": 1}
    cycle = find_cycle({m: set(t) for m, t in graph.items()})
    assert cycle in (["fibml.io", "fibml.synth.thickness", "fibml.io"],
                     ["fibml.synth.thickness", "fibml.io", "fibml.synth.thickness"])
    assert upward_imports(graph) == [
        "fibml.io (line 2, layer core) imports fibml.synth.thickness (layer science), a layer above it"]


def test_a_report_that_imports_a_pipeline_is_named(tmp_path):
    package = _write(tmp_path, {
        "fibml/__init__.py": "",
        "fibml/report.py": "def table():\n    from fibml.pipelines.evaluate import score_row\n",
        "fibml/pipelines/__init__.py": "",
        "fibml/pipelines/evaluate.py": "import fibml.report\n",
    })
    graph = read_imports(package)
    assert upward_imports(graph) == [
        "fibml.report (line 2, layer report) imports fibml.pipelines.evaluate (layer pipelines), a layer above it"]
    assert _package_graph(graph) == {"fibml.report": {"fibml.pipelines"}, "fibml.pipelines": {"fibml.report"}}
