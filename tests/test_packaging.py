"""The wheel: what it ships (configs, LICENSE, py.typed; no parity tooling), its metadata, and that an install of it
works outside the repository: `fastinst info --model fastinst-d1-r50` from a folder elsewhere, importing fastinst
from the install rather than the source tree.

Built offline with the environment's setuptools (`pip wheel --no-deps --no-build-isolation --no-index`) from a copy
of the source, so the build leaves nothing in the repository.
"""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import fastinst
from fastinst.config import VARIANTS

REPO = Path(__file__).resolve().parents[1]
CORE = {"torch", "torchvision", "numpy", "pillow", "scipy", "pycocotools", "pyyaml", "tqdm"}
EXTRAS = {"video", "onnx", "openvino", "tensorboard", "plots", "test", "dev", "all"}


def _pip(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path_factory.mktemp("dist")
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(dist), ".", cwd=src)
    (path,) = dist.glob("fastinst-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    _pip("install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel), cwd=target)
    return target


def test_wheel_files(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for variant in VARIANTS:
        assert f"fastinst/configs/{variant}.yaml" in names
    assert "fastinst/py.typed" in names
    dist_info = f"fastinst-{fastinst.__version__}.dist-info"
    assert f"{dist_info}/licenses/LICENSE" in names
    assert not [n for n in names if "parity" in n.lower()]
    assert {n.split("/")[0] for n in names} == {"fastinst", dist_info}  # no tests/, tools/, benchmarks/
    assert "fastinst/__init__.py" in names and "fastinst/cli.py" in names
    license_text = zipfile.ZipFile(wheel).read(f"{dist_info}/licenses/LICENSE").decode()
    assert license_text == (REPO / "LICENSE").read_text() and "Apache License" in license_text
    assert "Version 2.0, January 2004" in license_text


def test_wheel_metadata(wheel):
    dist_info = f"fastinst-{fastinst.__version__}.dist-info"
    meta = email.parser.Parser().parsestr(zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode())
    assert meta["Version"] == fastinst.__version__  # setuptools read it from fastinst/__init__.py
    assert meta["License-Expression"] == "Apache-2.0"
    requires = meta.get_all("Requires-Dist")
    core = [r for r in requires if "extra ==" not in r]
    assert {r.split(">")[0].split("<")[0].split("=")[0].strip().lower() for r in core} == CORE
    assert not [r for r in core if "<" in r]  # no upper caps on the core (torch, torchvision ...)
    assert set(meta.get_all("Provides-Extra")) == EXTRAS
    by_extra = {e: [r.split(";")[0] for r in requires if f'extra == "{e}"' in r] for e in EXTRAS}
    assert by_extra["video"] == ["av>=12"] and by_extra["plots"] == ["matplotlib>=3.8"]
    assert [r.split(">")[0] for r in by_extra["onnx"]] == ["onnx", "onnxruntime", "onnxscript"]
    assert [r.split(">")[0] for r in by_extra["tensorboard"]] == ["tensorboard"]
    (everything,) = by_extra["all"]
    assert set(everything.removeprefix("fastinst[").removesuffix("]").split(",")) == EXTRAS - {"all"}


def _run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`args` under the venv's python (torch from the venv) with only the installed wheel on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    return subprocess.run(list(args), capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_installed_wheel_works_outside_the_repository(installed, tmp_path):
    assert not tmp_path.resolve().is_relative_to(REPO)
    where = _run_installed(installed, tmp_path, sys.executable, "-c", "import fastinst; print(fastinst.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).resolve() == (installed / "fastinst" / "__init__.py").resolve()

    # the console script pip wrote, as a user runs it
    script = installed / "bin" / "fastinst"
    proc = _run_installed(installed, tmp_path, str(script), "info", "--model", "fastinst-d1-r50", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout)
    assert info["model"] == "fastinst_R50_ppm-fpn_x1_576" and info["params"]["total"] > 20_000_000
    config = Path(info["config"])
    assert config.resolve() == (installed / "fastinst" / "configs" / "fastinst_R50_ppm-fpn_x1_576.yaml").resolve()
    assert config.is_file()

    # a YAML path (here the installed copy of the demo's) still works as --model
    demo_yaml = installed / "fastinst" / "configs" / "fastinst-demo.yaml"
    proc = _run_installed(installed, tmp_path, sys.executable, "-m", "fastinst", "info", "--model", str(demo_yaml))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("fastinst-demo ") and f"config {demo_yaml.resolve()}" in proc.stdout

    version = _run_installed(installed, tmp_path, str(script), "--version")
    assert version.stdout.strip() == f"fastinst {fastinst.__version__}"
