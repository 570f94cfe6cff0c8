"""`fastinst predict`: fixture parity from the CLI, folders with bad files, videos, COCO json, error exits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastinst.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from test_predictor import compare_with_fixture, fixture_weights

NAMES = "circle,square,triangle,star"


def _image(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _predict(demo_weights, out, *sources, extra=()):
    return main(
        [
            "predict",
            "--model",
            "fastinst-demo",
            "--weights",
            demo_weights,
            "--classes",
            NAMES,
            "--output",
            str(out),
            *extra,
            *map(str, sources),
        ]
    )


def test_fixture_instances_from_the_cli(tmp_path, tmp_path_factory):
    weights, npz, meta = fixture_weights(tmp_path_factory)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(npz[f"input.{i}.original"]).save(photos / f"img{i}.png")
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            "--model",
            meta["config"],
            "--weights",
            str(weights),
            "--score-threshold",
            "0",
            "--max-dets",
            "100",
            "--batch-size",
            "2",
            "--dtype",
            "fp32",  # parity: the exact path whatever `auto` picks on this CPU
            "--save-json",
            "--output",
            str(out),
            str(photos),
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png", "predictions.json", "predictions.run.json"]
    from fastinst.data.coco_classes import COCO_CATEGORY_IDS

    contiguous = {cid: i for i, cid in enumerate(COCO_CATEGORY_IDS)}
    entries = json.loads((out / "predictions.json").read_text())
    for i in range(2):
        mine = [e for e in entries if Path(e["file_name"]).name == f"img{i}.png"]
        labels = np.array([contiguous[e["category_id"]] for e in mine])
        scores = np.array([e["score"] for e in mine], np.float32)
        compare_with_fixture(npz, i, labels, scores)


def test_folder_with_a_corrupt_file(demo_weights, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_image(0)).save(folder / "good.png")
    (folder / "bad.jpg").write_bytes(b"not a jpeg at all")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    assert _predict(demo_weights, out, folder) == 0
    printed = capsys.readouterr().out
    assert f"skipped {folder / 'bad.jpg'}:" in printed
    assert "1 image," in printed and "1 skipped" in printed
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]
    overlay = np.asarray(Image.open(out / "good.png"))
    assert overlay.shape == (48, 64, 3)


def test_a_bad_file_given_directly_is_an_error(demo_weights, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    assert _predict(demo_weights, tmp_path / "out", bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.png" in err and err.count("\n") == 1
    assert _predict(demo_weights, tmp_path / "out", tmp_path / "missing.png") == 2


def test_glob_and_coco_json(demo_weights, tmp_path):
    from pycocotools.coco import COCO

    for n in (1, 2):
        Image.fromarray(_image(n, 40 + n * 8, 56)).save(tmp_path / f"00000{n}.png")
    out = tmp_path / "out"
    assert (
        _predict(
            demo_weights, out, tmp_path / "*.png", extra=["--save-json", "--score-threshold", "0", "--batch-size", "2"]
        )
        == 0
    )
    entries = json.loads((out / "predictions.json").read_text())
    assert {e["image_id"] for e in entries} == {1, 2}  # numeric stems become COCO image ids
    assert {Path(e["file_name"]).name for e in entries} == {"000001.png", "000002.png"}
    gt = COCO()
    gt.dataset = {
        "images": [{"id": n, "height": 40 + n * 8, "width": 56} for n in (1, 2)],
        "annotations": [],
        "categories": [{"id": i} for i in range(1, 5)],
    }
    gt.createIndex()
    assert len(gt.loadRes(str(out / "predictions.json")).getAnnIds()) == len(entries) == 2 * 64


def test_video_round_trip(demo_weights, tmp_path):
    import av

    video = tmp_path / "clip.mp4"
    with av.open(str(video), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for n in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(_image(n), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = tmp_path / "out"
    assert _predict(demo_weights, out, video, extra=["--save-json", "--max-dets", "3", "--score-threshold", "0"]) == 0
    with av.open(str(out / "clip.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 3 and frames[0].shape == (48, 64, 3)
    entries = json.loads((out / "predictions.json").read_text())
    assert len(entries) == 9 and sorted({e["frame"] for e in entries}) == [0, 1, 2]
    assert len({e["image_id"] for e in entries}) == 3


def test_option_errors(demo_weights, tmp_path, capsys):
    Image.fromarray(_image(0)).save(tmp_path / "a.png")
    assert main(["predict", "--model", "fastinst-demo", str(tmp_path / "a.png")]) == 2
    assert "--weights" in capsys.readouterr().err
    assert main(["predict", "--backend", "onnxruntime", str(tmp_path / "a.png")]) == 2
    assert "--onnx" in capsys.readouterr().err
    assert _predict(demo_weights, tmp_path / "out", tmp_path / "a.png", extra=["--classes", "a,b"]) == 2
    assert "2 class names" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "100 best" in capsys.readouterr().out


def test_onnxruntime_backend_matches_torch(demo_weights, tmp_path):
    pytest.importorskip("onnxruntime")
    export = pytest.importorskip("fastinst.export")
    import fastinst

    model = fastinst.build_model("fastinst-demo")
    fastinst.load_checkpoint(model, demo_weights)
    onnx_file = export.export_onnx(model.eval(), tmp_path / "demo.onnx")
    Image.fromarray(_image(3)).save(tmp_path / "a.png")
    common = ["predict", "--classes", NAMES, "--score-threshold", "0", "--save-json", str(tmp_path / "a.png")]
    assert main([*common, "--backend", "onnxruntime", "--onnx", str(onnx_file), "--output", str(tmp_path / "ort")]) == 0
    torch_run = ["--model", "fastinst-demo", "--weights", demo_weights, "--dtype", "fp32"]  # the export is fp32
    assert main([*common, *torch_run, "--output", str(tmp_path / "pt")]) == 0
    ort = json.loads((tmp_path / "ort" / "predictions.json").read_text())
    pt = json.loads((tmp_path / "pt" / "predictions.json").read_text())

    def key(e: dict) -> tuple:
        return e["category_id"], round(e["score"], 3)

    assert len(ort) == len(pt) == 64
    np.testing.assert_allclose(sorted(e["score"] for e in ort), sorted(e["score"] for e in pt), atol=1e-3)
    assert sum(key(a) == key(b) for a, b in zip(sorted(ort, key=key), sorted(pt, key=key), strict=True)) >= 60


def test_output_folder_holding_the_inputs_never_replaces_one(demo_weights, tmp_path, capsys):
    """Issue #17: `--output DIR` where DIR holds the inputs writes overlays beside them under names no input has."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for n, name in enumerate(("photo.png", "photo_1.png", "photo.jpg")):
        Image.fromarray(_image(n)).save(photos / name)
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    assert _predict(demo_weights, photos, photos) == 0
    assert {name: (photos / name).read_bytes() for name in before} == before  # every input untouched
    overlays = sorted(p.name for p in photos.iterdir() if p.name not in before)
    assert overlays == ["photo_1_1.png", "photo_2.png", "photo_3.png"]  # photo.png and photo_1.png are inputs
    capsys.readouterr()
    assert _predict(demo_weights, photos / "photo.png", photos / "photo.png") == 2  # an input as --output
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "photo.png" in err and len(err.strip().splitlines()) == 1
    assert (photos / "photo.png").read_bytes() == before["photo.png"]


def test_a_failed_run_leaves_no_empty_output_folder(demo_weights, tmp_path, capsys):
    broken = tmp_path / "clip.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 and then nothing a decoder can use")
    out = tmp_path / "never_made"
    args = ["predict", str(broken), "--model", "fastinst-demo", "--weights", demo_weights, "--device", "cpu"]
    assert main([*args, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {broken}: cannot open the video")
    assert not out.exists()
    kept = tmp_path / "mine"
    kept.mkdir()  # a folder the user made is left where it is
    assert main([*args, "--output", str(kept)]) == 2
    assert kept.is_dir()


def test_onnx_file_selects_the_onnxruntime_backend(tmp_path, capsys):
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("not a model")
    (tmp_path / "a.png").write_bytes(b"")
    assert main(["predict", str(tmp_path / "a.png"), "--onnx", str(not_onnx), "--output", str(tmp_path / "o")]) == 2
    assert "onnxruntime cannot load it" in capsys.readouterr().err  # it went to onnxruntime, not the torch model


@pytest.mark.parametrize("amx", [True, False], ids=["amx", "no_amx"])
def test_predict_says_what_ran(demo_weights, tmp_path, capsys, monkeypatch, amx):
    """Issue #22: the default precision depends on the CPU (the probe forced here): the first line says what runs
    and predictions.run.json records it beside predictions.json."""
    from fastinst.model import fuse

    monkeypatch.setattr(fuse, "bf16_hardware", lambda: "AMX" if amx else None)
    Image.fromarray(_image(1)).save(tmp_path / "a.png")
    args = ["predict", "--model", "fastinst-demo", "--weights", demo_weights, "--device", "cpu", "--save-json"]
    assert main([*args, "--output", str(tmp_path / "out"), str(tmp_path / "a.png")]) == 0
    dtype, why = ("bf16", "auto: AMX") if amx else ("fp32", "auto: no bf16 hardware")
    assert capsys.readouterr().out.splitlines()[0] == f"predict: fastinst-demo · cpu · torch · {dtype} ({why})"
    run = json.loads((tmp_path / "out" / "predictions.run.json").read_text())["run"]
    assert (run["dtype"], run["dtype_reason"], run["backend"], run["device"]) == (dtype, why, "torch", "cpu")
