"""Every way a weights file can be wrong is one line naming the file, exit code 2, no traceback (docs/reliability.md).

Each file is written here in the real format (torch.save zip, legacy pickle, text) and goes through the real CLI
(`fastinst.cli.main`) in this process, or through the library call the CLI makes."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from fastinst import build_model, load_checkpoint
from fastinst.cli import main
from fastinst.config import get_config, to_dict
from fastinst.errors import CheckpointError

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from makers import coco_dict, make_coco

TINY = ["--model", "fastinst-demo", "--device", "cpu", "--val-split", "", "solver.ims_per_batch=2"]


def one_line_error(args: list[str], capsys) -> str:
    """Run the CLI; assert exit 2 and exactly one `error:` line (`note:` lines may come before it), no traceback
    -> that line."""
    code = main(args)
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note: ")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "x.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(path)
    return path


@pytest.fixture(scope="module")
def demo_state() -> dict:
    torch.manual_seed(0)
    return build_model("fastinst-demo").state_dict()


def predict_with(weights: Path, image: Path, tmp_path: Path, model: str = "fastinst-demo") -> list[str]:
    return ["predict", "--model", model, "--weights", str(weights), str(image), "--output", str(tmp_path / "out")]


@pytest.mark.parametrize(
    "content,words",
    [
        (b"hello, not a checkpoint\n", ["a text file, not a checkpoint"]),
        (b"ab", ["a text file"]),  # torch's weights-only unpickler: IndexError "pop from empty list"
        (b"hello", ["a text file"]),  # ... KeyError 101
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n", ["Git LFS pointer"]),
        (b"<!DOCTYPE html><html><body>404</body></html>", ["HTML page"]),
        (b"\x00\x01\x02\x03garbage", ["not a PyTorch checkpoint"]),
        (b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x05\x85\x94.", ["not a PyTorch checkpoint"]),
        (b"", ["file is empty"]),
    ],
)
def test_files_that_are_not_checkpoints(content, words, image, tmp_path, capsys):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(content)
    line = one_line_error(predict_with(bad, image, tmp_path), capsys)
    assert str(bad) in line
    for word in words:
        assert word in line, line
    assert not (tmp_path / "out").exists()


def test_truncated_checkpoint(demo_state, image, tmp_path, capsys):
    full = tmp_path / "full.pth"
    torch.save({"model": demo_state}, full)
    for keep in (0.5, 0.98, 0.05):
        cut = tmp_path / f"cut{keep}.pth"
        cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * keep)])
        line = one_line_error(predict_with(cut, image, tmp_path), capsys)
        assert str(cut) in line and "truncated or corrupt" in line, line
        assert len(line) < 300, line


class _RunsCode:
    """Unpickling this would call os.system: a checkpoint must never do it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_forbidden_global_is_refused_and_never_run(demo_state, image, tmp_path, capsys):
    marker = tmp_path / "ran"
    zipped = tmp_path / "zipped.pth"
    torch.save({"model": demo_state, "extra": _RunsCode(marker)}, zipped)
    legacy = tmp_path / "legacy.pth"
    with open(legacy, "wb") as f:  # the legacy (non-zip) torch format: a bare pickle
        pickle.dump({"model": _RunsCode(marker)}, f, protocol=2)
    for path in (zipped, legacy):
        line = one_line_error(predict_with(path, image, tmp_path), capsys)
        assert str(path) in line and "refused to load" in line and "could run code" in line, line
        assert "system" in line, line  # names the global it refused
        with pytest.raises(CheckpointError):
            load_checkpoint(build_model("fastinst-demo"), path)
    assert not marker.exists()


def test_another_class_count_says_the_counts(tmp_path):
    cfg = get_config("fastinst-demo")
    cfg.model.num_classes = 2
    two = tmp_path / "two.pth"
    torch.save({"model": build_model(cfg).state_dict(), "config": to_dict(cfg)}, two)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(build_model("fastinst-demo"), two)
    assert str(e.value) == f"{two}: this checkpoint has 2 classes, the model (fastinst-demo) 4"


def test_another_variant_names_both(demo_state, image, tmp_path, capsys):
    demo = tmp_path / "demo.pth"
    torch.save({"model": demo_state}, demo)  # no config: --model decides the architecture
    line = one_line_error(predict_with(demo, image, tmp_path, model="fastinst-d1-r50"), capsys)
    assert str(demo) in line and "fastinst_R50_ppm-fpn_x1_576" in line and "(fastinst-demo)" in line, line
    with pytest.raises(CheckpointError, match=r"does not fit fastinst-demo: it looks like FastInst-D1 R50"):
        load_checkpoint(build_model("fastinst-demo"), build_model("fastinst-d1-r50").state_dict())


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """A finished one-iteration training run of the demo model: (data, run folder)."""
    root = tmp_path_factory.mktemp("resume")
    data = make_coco(root / "data", "train2017", coco_dict())
    out = root / "run"
    assert main(["train", "--data", str(data), "--output", str(out), *TINY, "solver.max_iter=1"]) == 0
    return data, out


def test_resume_with_an_architecture_override_is_one_line(run, capsys):
    data, out = run
    capsys.readouterr()
    before = (out / "last.pth").read_bytes()
    args = ["train", "--data", str(data), "--output", str(out), "--resume", *TINY, "solver.max_iter=2"]
    line = one_line_error([*args, "model.hidden_dim=96"], capsys)
    assert str(out / "last.pth") in line and "cannot resume" in line and "model.hidden_dim 64 -> 96" in line, line
    line = one_line_error([*args, "model.num_queries=8", "model.dec_layers=2"], capsys)
    assert "model.num_queries 16 -> 8" in line and "model.dec_layers 1 -> 2" in line, line
    assert (out / "last.pth").read_bytes() == before  # the run is untouched


def test_resume_into_another_class_count_is_one_line(run, tmp_path, capsys):
    _data, out = run
    three = coco_dict()
    three["categories"].append({"id": 9, "name": "bird"})
    bird = {**three["annotations"][0], "id": 4, "image_id": 11, "category_id": 9}  # a bird in the second image
    three["annotations"].append(bird)
    make_coco(tmp_path / "three", "train2017", three)
    capsys.readouterr()
    args = ["train", "--data", str(tmp_path / "three"), "--output", str(out), "--resume", *TINY]
    line = one_line_error([*args, "solver.max_iter=2"], capsys)
    assert "cannot resume" in line and "model.num_classes 2 -> 3" in line, line


def test_resume_of_a_checkpoint_without_config_names_the_mismatch(run, tmp_path, capsys):
    data, out = run
    ckpt = torch.load(out / "last.pth", weights_only=True)
    bare = tmp_path / "bare"
    bare.mkdir()
    cfg = get_config("fastinst-demo")
    cfg.model.num_queries = 8
    ckpt["model"] = build_model(cfg).state_dict()
    del ckpt["config"]
    torch.save(ckpt, bare / "last.pth")
    capsys.readouterr()
    args = ["train", "--data", str(data), "--output", str(bare), "--resume", *TINY, "solver.max_iter=2"]
    line = one_line_error(args, capsys)
    assert str(bare / "last.pth") in line and "cannot resume" in line and "does not fit" in line, line


def test_a_checkpoint_as_model_and_weights(tmp_path):
    """`--model ckpt.pth --weights ckpt.pth` (the same file twice) loads it; two different checkpoints are one line."""
    import fastinst
    from fastinst.config import get_config, to_dict
    from fastinst.errors import FastInstError

    cfg = get_config("fastinst-demo")
    cfg.model.num_classes = 3
    state = fastinst.build_model(cfg).state_dict()
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save({"model": state, "config": to_dict(cfg)}, a)
    torch.save({"model": state, "config": to_dict(cfg)}, b)
    assert fastinst.load_model(str(a), str(a), device="cpu").num_classes == 3
    with pytest.raises(FastInstError, match="are two checkpoints; give one"):
        fastinst.load_model(str(a), str(b), device="cpu")
