"""Bad input through the real CLI: one line `error: ...` naming the file/key and the problem, exit code 2, no traceback.

Each case here is a row of the table in docs/reliability.md."""

from __future__ import annotations

import json

import pytest
import torch

from fastinst import build_model
from fastinst.cli import main
from fastinst.errors import FastInstError


def run_cli(args, capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def demo_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "demo.pth"
    torch.manual_seed(0)
    torch.save({"model": build_model("fastinst-demo").state_dict()}, path)
    return path


def test_unknown_model(capsys):
    assert_one_line_error(*run_cli(["info", "--model", "fastinst-d2-r50"], capsys), "unknown model", "fastinst-d2-r50")


def test_bad_override_key_and_type(capsys, tmp_path):
    ann = tmp_path / "a.json"
    ann.write_text("{}")
    code, err = run_cli(["train", "--model", "fastinst-demo", "--data", str(ann), "solver.max_itr=3"], capsys)
    assert_one_line_error(code, err, "solver.max_itr", "max_iter")
    code, err = run_cli(["train", "--model", "fastinst-demo", "--data", str(ann), "solver.max_iter=lots"], capsys)
    assert_one_line_error(code, err, "solver.max_iter", "integer")


def test_wrong_variant_checkpoint(capsys, tmp_path, demo_ckpt):
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (64, 48), (10, 200, 30)).save(img)
    code, err = run_cli(
        [
            "predict",
            "--model",
            "fastinst-d1-r50",
            "--weights",
            str(demo_ckpt),
            str(img),
            "--output",
            str(tmp_path / "out"),
        ],
        capsys,
    )
    assert_one_line_error(code, err, "demo.pth")


@pytest.mark.parametrize("content,word", [(b"", "empty"), (b"PK\x03\x04garbage", ""), (b"not a checkpoint", "")])
def test_broken_checkpoint_files(capsys, tmp_path, content, word):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(content)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (64, 48)).save(img)
    code, err = run_cli(
        ["predict", "--model", "fastinst-demo", "--weights", str(bad), str(img), "--output", str(tmp_path / "out")],
        capsys,
    )
    assert_one_line_error(code, err, "bad.pth", word)


def test_corrupt_image_given_directly(capsys, tmp_path, demo_ckpt):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    code, err = run_cli(
        [
            "predict",
            "--model",
            "fastinst-demo",
            "--weights",
            str(demo_ckpt),
            str(bad),
            "--output",
            str(tmp_path / "out"),
        ],
        capsys,
    )
    assert_one_line_error(code, err, "broken.jpg")


def test_malformed_dataset_json(capsys, tmp_path):
    ann = tmp_path / "instances_val.json"
    ann.write_text("{ not json")
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps([]))
    code, err = run_cli(["eval", "--results", str(preds), "--data", str(ann)], capsys)
    assert_one_line_error(code, err, "instances_val.json")


def test_debug_flag_shows_the_traceback(tmp_path):
    with pytest.raises(FastInstError, match="fastinst-nope"):
        main(["--debug", "info", "--model", "fastinst-nope"])
