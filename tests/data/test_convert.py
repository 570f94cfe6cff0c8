"""`to_coco_json` and `fastinst convert`: every layout converted, reloaded from the json, gives the same masks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fastinst.commands import convert as convert_cmd
from fastinst.data.convert import to_coco_json
from fastinst.data.registry import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import makers
from makers import decoded


def _same(a, b) -> None:
    assert a.names == b.names and a.category_ids == b.category_ids
    assert [Path(r["file_name"]).resolve() for r in a.records] == [Path(r["file_name"]).resolve() for r in b.records]
    for ra, rb in zip(a.records, b.records, strict=True):
        assert (ra["height"], ra["width"]) == (rb["height"], rb["width"])
        assert [(x["category_id"], x["iscrowd"]) for x in ra["annotations"]] == [
            (x["category_id"], x["iscrowd"]) for x in rb["annotations"]
        ]
        for ma, mb in zip(decoded(ra), decoded(rb), strict=True):
            assert np.array_equal(ma, mb)


def _sources(tmp_path: Path) -> dict:
    yaml, _ = makers.make_yolo(tmp_path / "yolo")
    makers.make_cityscapes(tmp_path / "cs")
    makers.make_ade20k(tmp_path / "ade")
    makers.make_coco(tmp_path / "coco")
    return {"yolo": yaml, "cityscapes": tmp_path / "cs", "ade20k": tmp_path / "ade", "coco": tmp_path / "coco"}


@pytest.mark.parametrize("rle", [False, True])
def test_round_trip_every_layout(tmp_path, rle):
    for kind, src in _sources(tmp_path).items():
        original = load_dataset(src, "val")
        out = to_coco_json(original, tmp_path / "out" / f"{kind}.json", rle=rle)
        again = load_dataset(out)
        _same(original, again)
        data = json.loads(out.read_text())
        assert not Path(data["images"][0]["file_name"]).is_absolute()  # relative to the json
        if rle:
            assert all(isinstance(a["segmentation"], dict) for a in data["annotations"])
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_convert_command(tmp_path, capsys):
    yaml, _ = makers.make_yolo(tmp_path / "yolo")
    out = tmp_path / "conv" / "val.json"
    args = argparse.Namespace(data=str(yaml), split="val", output=str(out), rle=False)
    assert convert_cmd.run(args) == 0
    assert "3 images, 3 annotations, 2 categories" in capsys.readouterr().out
    _same(load_dataset(yaml, "val"), load_dataset(out))


def test_convert_parser():
    parser = argparse.ArgumentParser()
    convert_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", "--data", "x", "--output", "o.json"])
    assert (args.split, args.output, args.rle) == ("val", "o.json", False)
