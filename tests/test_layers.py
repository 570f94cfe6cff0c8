"""Layers go one way (docs/DEVELOPING.md): no module imports from a layer above its own, lazily or not; no two
modules import each other, directly or round a circle (same layer included); no module imports another's private
(`_name`) names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fastinst"

# lower number = lower layer; a module may import its own layer and any below it
LAYERS = {
    "errors": 0,
    "log": 0,  # the one `fastinst` logger and its line handler (standard library only)
    "files": 0,
    "defaults": 0,  # torch-free defaults shared by the CLI parsers and the library (standard library only)
    "boxes": 0,  # the one mask -> box rule (numpy only)
    "config": 1,
    "config_schema": 1,  # the Config dataclasses and the rules of their values (imports errors only)
    "official_config": 1,  # the official YAML configs -> Config (imports config and official_keys)
    "official_keys": 1,  # the table of the official config keys (imports config only)
    "classes": 1,  # the one rule for matching classes (imports errors only)
    "checkpoint": 2,
    "backbone_weights": 2,  # ImageNet backbone files -> our ResNet (imports checkpoint)
    "data": 3,
    "losses": 4,
    "model": 5,
    "flops": 6,
    "hub": 6,
    "export": 7,
    "runtimes": 7,
    "factory": 7,
    "visualize": 7,
    "engine": 8,
    "commands": 9,
    "cli": 9,
    "__main__": 9,
    "__init__": 10,
    "__version__": 0,  # a constant of the package root, which imports nothing at import time
}


def _layer(module: str) -> int:
    """`fastinst.a.b` -> the layer of `a`."""
    return LAYERS[module.split(".")[1] if "." in module else "__init__"]


def _module(path: Path) -> str:
    """`src/fastinst/engine/evaluator.py` -> `fastinst.engine.evaluator` (a package's `__init__.py` -> the package)."""
    parts = ("fastinst", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(p for p in SRC.rglob("*.py"))
NAMES = {_module(p) for p in MODULES}


def _imported(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name) for every fastinst import of a file, top level and inside functions: `name` is the
    name taken from the module (`from .evaluator import coco_api`), None for a module itself (`import fastinst.x`,
    `from . import distributed`)."""
    package = _module(path) if path.name == "__init__.py" else _module(path).rsplit(".", 1)[0]
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in NAMES or target == "fastinst":  # a submodule (or a name of the package root)
                    found.append((node.lineno, sub, None))
                else:
                    found.append((node.lineno, target, alias.name))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names]
    return [(line, m, name) for line, m, name in found if m == "fastinst" or m.startswith("fastinst.")]


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every fastinst module a file imports (top level and inside functions), as absolute names."""
    return [(line, module) for line, module, _ in _imported(path)]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_import_goes_up(path):
    own = _layer(".".join(("fastinst", *path.relative_to(SRC).with_suffix("").parts)))
    upward = [f"line {line}: {name}" for line, name in _imports(path) if _layer(name) > own]
    assert not upward, f"{path.relative_to(SRC)} (layer {own}) imports from above: {upward}"


def test_the_check_sees_an_upward_import(tmp_path):
    probe = SRC / "model" / "_probe_layers.py"
    try:
        probe.write_text("def f():\n    from ..engine.predictor import Predictor\n")
        assert _imports(probe) == [(2, "fastinst.engine.predictor")]
        assert _layer("fastinst.engine.predictor") > _layer("fastinst.model._probe_layers")
    finally:
        probe.unlink()


# Known circles, each an explicit exception until its rework lands (issue #24); a circle not listed fails, and so
# does a listed one that is gone (delete its line then).
KNOWN_CIRCLES: set[frozenset[str]] = set()

# Private names still imported across modules, each an explicit exception until its rework lands (give them public
# names there). Any other private import fails, and so does a listed one that is gone.
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str, str]] = set()


def _graph() -> dict[str, set[str]]:
    """module -> the fastinst modules it imports (a name from a module counts as the module)."""
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        own = _module(path)
        graph[own] = {m for _, m, _ in _imported(path) if m in NAMES and m != own}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(graph[step]))))
                elif step in on_stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_no_import_circles():
    circles = set(_circles(_graph()))
    new = [sorted(c) for c in circles - KNOWN_CIRCLES]
    assert not new, f"modules that import each other (lazily or not): {new}"
    gone = [sorted(c) for c in KNOWN_CIRCLES - circles]
    assert not gone, f"circles that are gone: delete them from KNOWN_CIRCLES: {gone}"


def test_no_private_names_across_modules():
    found = {
        (_module(path), module, name)
        for path in MODULES
        for _, module, name in _imported(path)
        if name is not None and name.startswith("_") and not name.startswith("__") and module != _module(path)
    }
    new = sorted(found - KNOWN_PRIVATE_IMPORTS)
    assert not new, f"private names imported from another module (make them public there): {new}"
    gone = sorted(KNOWN_PRIVATE_IMPORTS - found)
    assert not gone, f"private imports that are gone: delete them from KNOWN_PRIVATE_IMPORTS: {gone}"


def test_the_checks_see_a_circle_and_a_private_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _circles(graph) == [frozenset({"a", "b", "c"})]
    probe = SRC / "engine" / "_probe_private.py"
    try:
        probe.write_text("def f():\n    from .evaluator import _as_numpy\n    from . import boundary\n")
        assert _imported(probe) == [
            (2, "fastinst.engine.evaluator", "_as_numpy"),
            (3, "fastinst.engine.boundary", None),
        ]
    finally:
        probe.unlink()


MAX_LINES = 500


def test_no_module_over_500_lines():
    """One idea per module (docs/DEVELOPING.md): a module that grows past this splits along its seams."""
    long = {str(p.relative_to(SRC)): n for p in MODULES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them): {long}"
