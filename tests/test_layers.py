"""Layers go one way (docs/DEVELOPING.md): no module imports from a layer above its own, lazily or not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fastinst"

# lower number = lower layer; a module may import its own layer and any below it
LAYERS = {
    "errors": 0,
    "files": 0,
    "config": 1,
    "official_config": 1,  # the official YAML configs -> Config (imports config only)
    "classes": 1,  # the one rule for matching classes (imports errors only)
    "checkpoint": 2,
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


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every fastinst module a file imports (top level and inside functions), as absolute names."""
    package = ".".join(("fastinst", *path.relative_to(SRC).with_suffix("").parts[:-1]))
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names] if target in ("fastinst", *[]) else [target]
            found += [(node.lineno, n) for n in names if n.startswith("fastinst")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("fastinst")]
    return found


MODULES = sorted(p for p in SRC.rglob("*.py"))


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
