"""`fastinst convert` on the command line: labelme folders (embedded images written out), instance label images,
and every refusal as one line with exit code 2, leaving no file behind."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastinst.cli import main
from fastinst.data.registry import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from makers import H, W, decoded, make_coco, write_image
from test_label_images import VOC_NAMES, make_voc
from test_labelme import _check, make_labelme


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()[-1:]
    assert line.startswith("error: ")
    assert not [s for s in captured.err.splitlines() if s.startswith("Traceback")]
    return line


def _no_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_labelme_folder_with_embedded_image(tmp_path, capsys):
    root = tmp_path / "lm"
    expected = make_labelme(root)
    out = tmp_path / "coco" / "train.json"
    assert main(["convert", "--data", str(root), "--split", "train", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "wrote 1 images embedded in the labelme files" in text and "2 images, 7 annotations, 2 categories" in text
    assert (tmp_path / "coco" / "train_images" / "b.png").is_file()
    data = json.loads(out.read_text())
    assert [im["file_name"] for im in data["images"]] == ["../lm/a.jpg", "train_images/b.png"]
    assert [c["name"] for c in data["categories"]] == ["dog", "cat"]
    _check(load_dataset(out), expected)
    # --rle: the same masks, every one as RLE
    rle_out = tmp_path / "coco" / "rle.json"
    assert main(["convert", "--data", str(root), "--output", str(rle_out), "--rle"]) == 0
    assert all(isinstance(a["segmentation"], dict) for a in json.loads(rle_out.read_text())["annotations"])
    _check(load_dataset(rle_out), expected)


def test_label_images_routes(tmp_path, capsys):
    expected = make_voc(tmp_path / "voc")
    out = tmp_path / "voc.json"
    argv = ["convert", "--masks", str(tmp_path / "voc" / "SegmentationObject"), "--images"]
    argv += [str(tmp_path / "voc" / "JPEGImages"), "--class-masks", str(tmp_path / "voc" / "SegmentationClass")]
    assert main([*argv, "--classes", ",".join(VOC_NAMES), "--output", str(out)]) == 0
    assert "2 images, 6 annotations, 20 categories" in capsys.readouterr().out
    ds = load_dataset(out)
    for r in ds.records:
        want = expected[Path(r["file_name"]).stem]
        got = [(ds.category_ids[a["category_id"]], m) for a, m in zip(r["annotations"], decoded(r), strict=True)]
        assert [c for c, _ in got] == [c for c, _ in want]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, want, strict=True))
    # one class, from a 16-bit label image
    cells = tmp_path / "cells"
    labels = np.zeros((H, W), np.uint16)
    labels[2:10, 2:10], labels[12:20, 5:30] = 1000, 2
    write_image(cells / "a.png")
    Image.fromarray(labels).save(cells / "a_masks.png")
    out = tmp_path / "cells.json"
    assert (
        main(["convert", "--masks", str(cells), "--images", str(cells), "--class", "cell", "--output", str(out)]) == 0
    )
    ds = load_dataset(out)
    assert ds.names == ["cell"]
    assert [m.sum() for m in decoded(ds.records[0])] == [200, 64]


def test_refusals_are_one_line(tmp_path, capsys):
    root = tmp_path / "lm"
    make_labelme(root)
    coco = make_coco(tmp_path / "coco")
    (tmp_path / "folder").mkdir()
    ann = coco / "annotations" / "instances_val2017.json"
    before = ann.read_text()
    cases = [
        (["--data", str(root), "--output", str(tmp_path / "folder")], "must be a file path, but this is an existing"),
        (["--data", str(root), "--output", str(root / "train.json")], "inside the labelme folder"),
        (["--data", str(coco), "--output", str(ann)], "is the input annotation file"),
        (["--data", str(ann), "--output", str(ann)], "is also an input"),
        (["--masks", str(root), "--output", str(tmp_path / "o.json")], "--masks needs --images"),
        (["--data", str(root), "--images", str(root), "--output", str(tmp_path / "o.json")], "--images goes with"),
        (
            ["--masks", str(root), "--images", str(root), "--classes", "a,b", "--output", str(tmp_path / "o.json")],
            "--classes needs",
        ),
        (
            [
                "--masks",
                str(root),
                "--images",
                str(root),
                "--classes",
                "gone.txt",
                "--class-masks",
                str(root),
                "--output",
                str(tmp_path / "o.json"),
            ],
            "--classes gone.txt: no such file",
        ),
    ]
    for argv, pattern in cases:
        assert pattern in _error(capsys, ["convert", *argv]), argv
    assert ann.read_text() == before
    assert _no_files(tmp_path / "folder") == [] and not (root / "train.json").exists()
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*_images"))
    # a label that labels.txt does not list: the json and the label named
    (root / "labels.txt").write_text("__ignore__\n_background_\ndog\n")
    line = _error(capsys, ["convert", "--data", str(root), "--output", str(tmp_path / "x.json")])
    assert line == f"error: {root / 'a.json'}: label 'cat' is not listed in {root / 'labels.txt'}"
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x_images").exists()


def test_data_and_masks_are_exclusive(capsys):
    with pytest.raises(SystemExit) as e:
        main(["convert", "--data", "d", "--masks", "m", "--output", "o.json"])
    assert e.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "not allowed with argument" in line
