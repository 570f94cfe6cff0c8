"""The command line's surface: `--help` and `--version` never import torch, `--model` and `--device` everywhere,
usage mistakes and missing extras as one line `error: ...` with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastinst
from fastinst.cli import COMMANDS, EXTRAS, build_parser, main

REPO = Path(__file__).resolve().parents[1]
MODEL_COMMANDS = ["train", "eval", "predict", "benchmark", "app"]  # the commands that run a model on a device
# the smallest valid argument list of each command, to which a test adds the option under test
BASE_ARGS = {
    "demo": [],
    "train": ["--model", "fastinst-demo", "--data", "d"],
    "eval": ["--results", "r.json", "--data", "d"],
    "predict": ["x.jpg"],
    "export": [],
    "benchmark": [],
    "info": [],
    "convert": ["--data", "d", "--output", "o.json"],
    "app": [],
}


def imported_modules(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `python -X importtime <args>` on the source tree; -> (the process, every module it imported)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    # lines look like "import time:       250 |        250 |     yaml.error". Modules loaded by
    # importlib.import_module (the command modules) are not listed, but whatever they import with `import` is.
    modules = [line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    return proc, modules


def torch_modules(modules: list[str]) -> list[str]:
    return [m for m in modules if m == "torch" or m.startswith("torch.")]


def test_the_import_check_sees_torch_when_it_is_imported():
    """The check below is not vacuous: the same parsing finds torch in a process that does import it."""
    proc, modules = imported_modules("-c", "import torch")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch" in torch_modules(modules)


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_imports_no_torch(command):
    proc, modules = imported_modules("-m", "fastinst", *([command] if command else []), "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: fastinst {command}".rstrip()), proc.stdout[:200]
    assert "fastinst.cli" in modules  # the output was parsed: the CLI's own import is listed
    assert torch_modules(modules) == [], f"`fastinst {command} --help` imports torch"


def test_version_imports_no_torch():
    proc, modules = imported_modules("-m", "fastinst", "--version")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"fastinst {fastinst.__version__}"
    assert "fastinst.cli" in modules
    assert torch_modules(modules) == []


def _subparsers() -> dict:
    parser, _ = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return dict(action.choices)


def test_every_command_that_runs_a_model_takes_device_auto():
    parsers = _subparsers()
    assert sorted(parsers) == sorted(COMMANDS)
    for name in MODEL_COMMANDS:
        args = parsers[name].parse_args(BASE_ARGS[name])
        assert args.device == "auto", name
    for name in set(COMMANDS) - set(MODEL_COMMANDS):
        assert "device" not in vars(parsers[name].parse_args(BASE_ARGS[name])), name


@pytest.mark.parametrize(
    "value,parsed",
    [("cpu", "cpu"), ("cuda", "cuda"), ("cuda:1", "cuda:1"), ("mps", "mps"), ("auto", "auto"), ("CUDA:0", "cuda:0")],
)
def test_device_values_accepted(value, parsed):
    parsers = _subparsers()
    for name in MODEL_COMMANDS:
        assert parsers[name].parse_args([*BASE_ARGS[name], "--device", value]).device == parsed, name


def usage_error(capsys, argv: list[str]) -> str:
    """Run the CLI on a usage mistake; -> its one stderr line, after checking exit code 2 and no other output."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert captured.out == ""
    return lines[0]


@pytest.mark.parametrize("command", MODEL_COMMANDS)
@pytest.mark.parametrize("value", ["gpu0", "cuda:", "cuda:x", "cpu:0", "tpu"])
def test_bad_device_is_a_one_line_usage_error(capsys, command, value):
    line = usage_error(capsys, [command, *BASE_ARGS[command], "--device", value])
    assert f"invalid device '{value}'" in line and "auto, cpu, cuda, cuda:N or mps" in line
    assert f"fastinst {command} --help" in line


@pytest.mark.parametrize("command", ["info", "export", "benchmark"])
@pytest.mark.parametrize("size", [("0", "0"), ("-32", "64"), ("64", "x")])
def test_bad_size_is_a_one_line_usage_error(capsys, command, size):
    line = usage_error(capsys, [command, *BASE_ARGS[command], "--size", *size])
    assert line.startswith("error: argument --size: ")


def test_unknown_option_and_command_are_one_line(capsys):
    assert "unrecognized arguments: --nope" in usage_error(capsys, ["info", "--nope"])
    assert "invalid choice: 'predcit'" in usage_error(capsys, ["predcit"])


def test_info_takes_model_as_an_option(capsys):
    assert main(["info", "--model", "fastinst-demo", "--json"]) == 0
    captured = capsys.readouterr()
    info = json.loads(captured.out)
    assert info["model"] == "fastinst-demo" and captured.err == ""
    assert Path(info["config"]) == Path(fastinst.__file__).parent / "configs" / "fastinst-demo.yaml"
    assert Path(info["config"]).is_file()


def test_info_positional_model_still_works_with_a_note(capsys):
    assert main(["info", "fastinst-demo", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["model"] == "fastinst-demo"
    (note,) = captured.err.strip().splitlines()
    assert note.startswith("note: ") and "deprecated" in note and "fastinst info --model fastinst-demo" in note
    assert main(["info", "fastinst-demo", "--model", "fastinst-demo"]) == 2
    assert "use --model" in capsys.readouterr().err


def test_info_default_model_and_help():
    args = _subparsers()["info"].parse_args([])
    assert (args.model, args.positional_model) == (None, None)
    text = _subparsers()["info"].format_help()
    assert "--model MODEL" in text and "positional" not in text  # the old spelling is hidden


@pytest.mark.parametrize("module", sorted(EXTRAS))
def test_missing_extra_is_one_line_naming_it(capsys, monkeypatch, module):
    """A command whose optional dependency is not installed: `error: ... pip install 'fastinst[<extra>]'`."""

    def needs_it(args):
        __import__(module)  # None in sys.modules: ModuleNotFoundError, as when it is not installed

    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setattr("fastinst.commands.convert.run", needs_it)
    assert main(["convert", "--data", "d", "--output", "o.json"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"error: this needs {module}, which is not installed: pip install 'fastinst[{EXTRAS[module]}]'"


def test_other_missing_modules_are_not_hidden(monkeypatch):
    def needs_it(args):
        __import__("numpy")

    monkeypatch.setitem(sys.modules, "numpy", None)
    monkeypatch.setattr("fastinst.commands.convert.run", needs_it)
    with pytest.raises(ModuleNotFoundError):
        main(["convert", "--data", "d", "--output", "o.json"])


def test_eval_without_matplotlib_writes_the_metrics_then_names_the_extra(capsys, monkeypatch, tmp_path):
    sys.path.insert(0, str(REPO / "tests" / "data"))
    from makers import make_coco

    from fastinst.data.convert import to_coco_json
    from fastinst.data.registry import load_dataset

    root = make_coco(tmp_path / "coco")
    gt = json.loads(to_coco_json(load_dataset(str(root)), tmp_path / "rle.json", rle=True).read_text())
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"], "score": 1.0}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    (tmp_path / "r.json").write_text(json.dumps(results))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "out"
    argv = ["eval", "--results", str(tmp_path / "r.json"), "--data", str(root), "--output", str(out)]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "error: this needs matplotlib, which is not installed: pip install 'fastinst[plots]'"
    )
    assert json.loads((out / "metrics.json").read_text())["AP"] == pytest.approx(100.0)
