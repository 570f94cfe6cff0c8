"""The official README's two commands run verbatim (`fastinst train` for `python train_net.py`) on the official config
files, against a COCO-layout dataset under `$DETECTRON2_DATASETS`:

    train_net.py --eval-only --num-gpus N --config-file configs/.../fastinst_R50_ppm-fpn_x1_576.yaml MODEL.WEIGHTS ckpt
    train_net.py --num-gpus N --config-file configs/.../fastinst_R50_ppm-fpn_x1_576.yaml [MODEL.WEIGHTS backbone]

with KEY VALUE overrides that make them tiny; `--num-gpus 2` runs two CPU processes through torch.distributed.run.
The ImageNet backbones the README links load as MODEL.WEIGHTS: detectron2's `R-50.pkl` (torchvision converted),
the MSRA `R-101.pkl` (Caffe2 blob names, BN folded into scale and bias) and timm's `resnet50d_ra2-464e36ba` (.pth,
and the .pkl that the official convert-timm-to-d2.py writes), each written here in its real names and shapes.
"""

from __future__ import annotations

import json
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from fastinst import build_model
from fastinst.backbone_weights import load_backbone
from fastinst.cli import main
from fastinst.config import apply_overrides, get_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from makers import coco_dict, make_coco, rle

OFFICIAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "official-configs" / "coco" / "instance-segmentation"
pytestmark = pytest.mark.skipif(not OFFICIAL.is_dir(), reason=f"no official configs under {OFFICIAL}")
D1 = str(OFFICIAL / "fastinst_R50_ppm-fpn_x1_576.yaml")

# the official recipe at toy size: 64-px images, 2 iterations of 2 images, 256 points per mask loss
TINY = ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(64,)"]
TINY += ["INPUT.MAX_SIZE_TRAIN", "96", "INPUT.CROP.ENABLED", "False", "INPUT.MIN_SIZE_TEST", "64"]
TINY += ["INPUT.MAX_SIZE_TEST", "96", "MODEL.FASTINST.TRAIN_NUM_POINTS", "256", "DATALOADER.NUM_WORKERS", "0"]
NO_EVAL = ["DATASETS.TEST", "()"]


@pytest.fixture(scope="module")
def d2_root(tmp_path_factory):
    """$DETECTRON2_DATASETS with coco/annotations/instances_{train,val}2017.json and coco/{train,val}2017/*.jpg."""
    root = tmp_path_factory.mktemp("detectron2_datasets")
    make_coco(root / "coco", "train2017", coco_dict())
    make_coco(root / "coco", "val2017", coco_dict())
    return root


@pytest.fixture
def seed_env(d2_root, tmp_path, monkeypatch):
    """Run in a fresh folder (OUTPUT_DIR is relative) with only $DETECTRON2_DATASETS naming the data."""
    monkeypatch.delenv("FASTINST_DATASETS", raising=False)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(d2_root))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _torchvision_resnet(depth: int) -> torch.nn.Module:
    torch.manual_seed(depth)
    tv = getattr(torchvision.models, f"resnet{depth}")().eval()
    for m in tv.modules():  # non-trivial BN statistics, so that a wrong BN conversion shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return tv


def _split(name: str) -> tuple[str, str, str] | None:
    """torchvision `layer1.0.bn2.weight` -> ("res2", "0", "2", ...) pieces for the renames below."""
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", name)
    return (f"res{int(m.group(1)) + 1}", m.group(2), m.group(3)) if m else None


def detectron2_torchvision_pkl(tv: torch.nn.Module, path: Path) -> None:
    """detectron2's `ImageNetPretrained/torchvision/R-50.pkl` layout: detectron2 names, numpy arrays, author
    "torchvision" (what detectron2's convert-torchvision-to-d2.py writes)."""
    out = {}
    for k, v in tv.state_dict().items():
        if k.startswith("fc.") or k.endswith("num_batches_tracked"):
            continue
        if k == "conv1.weight":
            name = "stem.conv1.weight"
        elif k.startswith("bn1."):
            name = "stem.conv1.norm." + k[4:]
        else:
            stage, block, rest = _split(k)  # type: ignore[misc]
            rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
            rest = rest.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
            name = f"{stage}.{block}.{rest}"
        out[name] = v.numpy()
    path.write_bytes(pickle.dumps({"model": out, "__author__": "torchvision", "matching_heuristics": True}))


def msra_caffe2_pkl(tv: torch.nn.Module, path: Path) -> dict[str, np.ndarray]:
    """detectron2's `ImageNetPretrained/MSRA/R-101.pkl` layout: a flat dict of Caffe2 blobs (no "model" key), convs
    `*_w`, each BN folded into `*_bn_s` (scale) and `*_bn_b` (bias), the classifier `fc1000_w/b`."""
    sd = tv.state_dict()
    blobs: dict[str, np.ndarray] = {}

    def bn(prefix: str, src: str) -> None:
        scale = sd[f"{src}.weight"] / torch.sqrt(sd[f"{src}.running_var"] + 1e-5)
        blobs[f"{prefix}_bn_s"] = scale.numpy()
        blobs[f"{prefix}_bn_b"] = (sd[f"{src}.bias"] - sd[f"{src}.running_mean"] * scale).numpy()

    blobs["conv1_w"] = sd["conv1.weight"].numpy()
    bn("res_conv1", "bn1")
    for k in sd:
        m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv(\d)|downsample\.0)\.weight", k)
        if not m:
            continue
        base = f"res{int(m.group(1)) + 1}_{m.group(2)}"
        branch = "branch1" if m.group(4) is None else "branch2" + "abc"[int(m.group(4)) - 1]
        blobs[f"{base}_{branch}_w"] = sd[k].numpy()
        norm = k.replace("conv", "bn").removesuffix(".weight") if m.group(4) else k.replace(".0.weight", ".1")
        bn(f"{base}_{branch}", norm)
    blobs["fc1000_w"], blobs["fc1000_b"] = sd["fc.weight"].numpy(), sd["fc.bias"].numpy()
    path.write_bytes(pickle.dumps(blobs))
    return blobs


def _train(args: list[str]) -> int:
    return main(["train", *args])


def test_train_seed_command_verbatim_with_detectron2_r50_pkl(seed_env, capsys):
    tv = _torchvision_resnet(50)
    detectron2_torchvision_pkl(tv, seed_env / "R-50.pkl")
    code = _train(["--num-gpus", "1", "--config-file", D1, "MODEL.WEIGHTS", "R-50.pkl", *TINY, "OUTPUT_DIR", "out"])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    total = len(build_model("fastinst-d1-r50").backbone.state_dict())
    assert f"transferred {total}/{total} backbone tensors from R-50.pkl" in out
    assert "note: ignored (no meaning in fastinst): " in err and "VERSION" in err
    assert "training fastinst_R50_ppm-fpn_x1_576 on 2 images, 2 classes, 1 process(es) x 2 images, 2 iterations" in out
    ckpt = torch.load(seed_env / "out" / "last.pth", weights_only=True)
    assert ckpt["iteration"] == 2 and ckpt["config"]["name"] == "fastinst_R50_ppm-fpn_x1_576"
    assert ckpt["config"]["model"]["dec_layers"] == 1 and ckpt["config"]["input"]["min_size_test"] == 64
    # the frozen BN statistics never train: they are the file's
    mean = ckpt["model"]["backbone.res4.5.conv2.norm.running_mean"]
    assert torch.equal(mean, tv.layer3[5].bn2.running_mean)
    # DATASETS.TEST coco_2017_val was evaluated at the end
    events = [json.loads(line) for line in (seed_env / "out" / "metrics.jsonl").read_text().splitlines()]
    assert any("AP" in e for e in events)


def _self_labelled_coco(root: Path, model) -> Path:
    """`root/coco/...val2017` whose ground truth is the model's own best masks (class 0 -> id 3, 1 -> id 7), so an
    evaluation that runs the same network at the same sizes scores high, and anything else scores lower."""
    from fastinst.data.images import read_image

    data = coco_dict()
    make_coco(root / "coco", "val2017", data)
    annotations = []
    for im in data["images"]:
        found = model.detect([read_image(root / "coco" / "val2017" / im["file_name"])], 0.0, 100)[0]
        for k in [k for k in range(len(found["scores"])) if found["masks"][k].sum() >= 10][:3]:
            mask = found["masks"][k].numpy()
            r = rle(mask)
            annotations.append(
                {"id": len(annotations) + 1, "image_id": im["id"], "category_id": (3, 7)[int(found["labels"][k])],
                 "segmentation": r, "iscrowd": 0, "area": float(mask.sum()), "bbox": [0.0, 0.0, 1.0, 1.0]}
            )  # fmt: skip
    assert annotations, "the random model found no mask to use as ground truth"
    data["annotations"] = annotations
    (root / "coco" / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return root


def test_eval_only_seed_command_equals_fastinst_eval(seed_env, tmp_path, monkeypatch, capsys):
    overrides = ["model.num_classes=2", "input.min_size_test=64", "input.max_size_test=96"]
    cfg = apply_overrides(get_config("fastinst_R50_ppm-fpn_x1_576"), overrides)
    torch.manual_seed(3)
    model = build_model(cfg).eval()
    torch.save({"model": model.state_dict()}, seed_env / "checkpoint_file.pth")  # the official format
    with torch.inference_mode():
        d2_root = _self_labelled_coco(tmp_path / "self_labelled", model)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(d2_root))
    sizes = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]
    args = ["--eval-only", "--num-gpus", "1", "--config-file", D1, "MODEL.WEIGHTS", "checkpoint_file.pth", *sizes]
    assert _train([*args, "OUTPUT_DIR", "seed_eval"]) == 0, capsys.readouterr().err[-2000:]
    ours = seed_env / "d1_64.yaml"
    ours.write_text("base: fastinst_R50_ppm-fpn_x1_576\ninput:\n  min_size_test: 64\n  max_size_test: 96\n")
    data = ["--data", str(d2_root / "coco"), "--split", "val"]
    code = main(["eval", "--model", str(ours), "--weights", "checkpoint_file.pth", *data, "--output", "our_eval"])
    assert code == 0, capsys.readouterr().err[-2000:]
    seed = json.loads((seed_env / "seed_eval" / "metrics.json").read_text())
    plain = json.loads((seed_env / "our_eval" / "metrics.json").read_text())
    assert seed["AP"] > 50 and seed["AP"] == plain["AP"] and seed == plain  # a real score, the same on both routes
    predictions = json.loads((seed_env / "seed_eval" / "predictions.json").read_text())
    assert predictions and predictions == json.loads((seed_env / "our_eval" / "predictions.json").read_text())
    # the official test size (576) is another network input: the score drops, so the sizes above really applied
    capsys.readouterr()
    official_size = ["--eval-only", "--config-file", D1, "MODEL.WEIGHTS", "checkpoint_file.pth"]
    assert _train([*official_size, "OUTPUT_DIR", "seed_eval_576"]) == 0
    assert json.loads((seed_env / "seed_eval_576" / "metrics.json").read_text())["AP"] < seed["AP"]


def test_train_seed_command_with_two_processes_on_cpu(seed_env, capfd):
    code = _train(["--num-gpus", "2", "--config-file", D1, "MODEL.WEIGHTS", "", *TINY, *NO_EVAL, "OUTPUT_DIR", "ddp"])
    out, err = capfd.readouterr()
    assert code == 0, err[-3000:]
    assert "starting python -m torch.distributed.run --nproc_per_node=2 --nnodes=1 --node_rank=0" in err
    assert "2 process(es) x 1 images, 2 iterations" in out
    assert int(torch.load(seed_env / "ddp" / "last.pth", weights_only=True)["iteration"]) == 2


def test_msra_caffe2_r101_pkl_trains_the_r101_config(seed_env, capsys):
    tv = _torchvision_resnet(101)
    blobs = msra_caffe2_pkl(tv, seed_env / "R-101.pkl")
    # the conversion is exact: our backbone computes torchvision's features from the Caffe2 blobs
    model = build_model("fastinst-d3-r101").eval()
    load_backbone(model, seed_env / "R-101.pkl")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = model.backbone(x)["res5"]
        ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
    assert (ours - ref).abs().max() <= 1e-4 * ref.abs().max()
    r101 = str(OFFICIAL / "fastinst_R101_ppm-fpn_x3_640.yaml")
    one = ["SOLVER.MAX_ITER", "1", *TINY[2:]]
    code = _train(["--num-gpus", "1", "--config-file", r101, "MODEL.WEIGHTS", "R-101.pkl", *one, *NO_EVAL])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    total = len(model.backbone.state_dict())
    assert f"transferred {total}/{total} backbone tensors from R-101.pkl (Caffe2/MSRA names)" in out
    ckpt = torch.load(seed_env / "output" / "fastinst_r101_ppm-fpn_bs16_50ep_x3_640" / "last.pth", weights_only=True)
    frozen = ckpt["model"]["backbone.res4.22.conv2.norm.weight"]  # FrozenBN: the file's scale, untouched
    assert np.array_equal(frozen.numpy(), blobs["res4_22_branch2b_bn_s"])
    assert ckpt["config"]["model"]["depth"] == 101 and ckpt["config"]["model"]["dec_layers"] == 3


def test_timm_resnet50d_pth_and_converted_pkl_train_the_vd_config(seed_env, capsys):
    torch.manual_seed(5)
    vd = build_model("fastinst-d1-r50vd-dcn").backbone
    timm = {k: v.clone() for k, v in vd.state_dict().items()}  # timm's resnet50d names and shapes
    offsets = [k for k in timm if "conv2_offset" in k]  # FastInst's DCN offsets: not in the ImageNet file
    for k in offsets:
        del timm[k]
    for k, v in timm.items():  # distinct BN statistics (finite activations: DCN needs finite offsets)
        if k.endswith(("running_mean", "bias")):
            v.uniform_(-0.1, 0.1)
        elif k.endswith("running_var") or (v.ndim == 1 and k.endswith("weight")):
            v.uniform_(0.5, 1.0)
    timm["fc.weight"], timm["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    timm["layer1.0.bn1.num_batches_tracked"] = torch.tensor(7)
    torch.save(timm, seed_env / "resnet50d_ra2-464e36ba.pth")  # as the README's timm link serves it
    converted = {"backbone." + k: v.numpy() for k, v in timm.items()}  # what convert-timm-to-d2.py writes
    pkl = seed_env / "resnet50d_ra2-464e36ba.pkl"
    pkl.write_bytes(pickle.dumps({"model": converted, "__author__": "timm", "matching_heuristics": True}))
    config = str(OFFICIAL / "fastinst_R50-vd-dcn_ppm-fpn_x1_576.yaml")
    one = ["SOLVER.MAX_ITER", "1", *TINY[2:], *NO_EVAL]
    total = len(vd.state_dict())
    for n, name in enumerate(("resnet50d_ra2-464e36ba.pth", "resnet50d_ra2-464e36ba.pkl")):
        code = _train(["--config-file", config, "MODEL.WEIGHTS", name, *one, "OUTPUT_DIR", f"out{n}"])
        out, err = capsys.readouterr()
        assert code == 0, err[-2000:]
        line = f"transferred {total - len(offsets)}/{total} backbone tensors from {name}; "
        assert line + f"{len(offsets)} DCN offset tensors start at zero" in out
        ckpt = torch.load(seed_env / f"out{n}" / "last.pth", weights_only=True)
        assert torch.equal(ckpt["model"]["backbone.layer3.0.bn2.running_mean"], timm["layer3.0.bn2.running_mean"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["MODEL.WEIGHTS", "checkpoints/R-50.pkl"], "error: MODEL.WEIGHTS checkpoints/R-50.pkl: no such file"),
        (["MODEL.WEIGHTS", "", "SOLVER.IMS_PER_BATC", "8"], "did you mean SOLVER.IMS_PER_BATCH?"),
        (["MODEL.WEIGHTS", "", "--num-machines", "2"], "--num-machines > 1 needs --dist-url tcp://HOST:PORT"),
        (["MODEL.WEIGHTS", "", "--model", "fastinst-demo"], "--config-file and --model both name the model"),
        (["MODEL.WEIGHTS", "", "DATASETS.TRAIN", "('cityscapes_fine_instance_seg_train',)"], "cityscapes"),
        (["--eval-only", "MODEL.WEIGHTS", ""], "--eval-only needs the checkpoint to evaluate"),
    ],
)
def test_seed_command_mistakes_are_one_line_errors(seed_env, capsys, extra, message):
    assert _train(["--config-file", D1, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == err.count("note:") + 1, err


def test_both_override_forms_mix_and_the_launched_processes_get_the_same_run(seed_env, d2_root):
    from fastinst.cli import build_parser
    from fastinst.commands._official import child_argv, prepare_official, rendezvous
    from fastinst.errors import FastInstError

    parser, _ = build_parser()
    words = ["train", "--num-gpus", "2", "--config-file", D1, "SOLVER.IMS_PER_BATCH", "8", "solver.max_iter=3"]
    words += ["SOLVER.MAX_ITER", "7", "MODEL.WEIGHTS", "", "OUTPUT_DIR", "o"]
    args = parser.parse_args(words)
    prepare_official(args)
    assert (args.model, args.data, args.train_split, args.val_split, args.output, args.weights) == (
        "fastinst_R50_ppm-fpn_x1_576",
        str(d2_root / "coco"),  # DATASETS.TRAIN coco_2017_train under $DETECTRON2_DATASETS
        "train",
        "val",  # DATASETS.TEST coco_2017_val: the same dataset's val split
        "o",
        None,
    )
    cfg = apply_overrides(get_config(args.model), args.overrides)
    assert (cfg.solver.ims_per_batch, cfg.solver.max_iter) == (8, 3)  # ours apply after the official pairs
    passed = child_argv(words)  # what each process started by the launcher parses: these words minus --num-gpus 2
    assert passed == [words[0], *words[3:]]
    again = parser.parse_args(passed)
    prepare_official(again)  # each process resolves the official command line as this one did
    assert (again.model, again.data, again.output, again.overrides) == (args.model, args.data, "o", args.overrides)
    assert again.num_gpus == 1 and again.config_file == D1
    assert rendezvous("tcp://10.1.2.3:29555", 2) == ("10.1.2.3", 29555)
    with pytest.raises(FastInstError, match="use tcp://HOST:PORT"):
        rendezvous("file:///tmp/x", 1)


def test_detectron2_urls_in_model_weights_are_fetched_from_detectron2s_server(monkeypatch, tmp_path):
    import fastinst.hub
    from fastinst.commands._official import official_weights

    asked = []
    monkeypatch.setattr(fastinst.hub, "fetch", lambda url, *a, **k: asked.append(url) or tmp_path / "R-50.pkl")
    assert official_weights("detectron2://ImageNetPretrained/torchvision/R-50.pkl") == str(tmp_path / "R-50.pkl")
    assert asked == ["https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/torchvision/R-50.pkl"]


def test_convert_takes_the_official_dataset_names(seed_env, capsys):
    """`fastinst convert --data coco_2017_val` finds the split under $DETECTRON2_DATASETS, as train and eval do."""
    assert main(["convert", "--data", "coco_2017_val", "--output", "val.json"]) == 0, capsys.readouterr().err
    converted = json.loads((seed_env / "val.json").read_text())
    assert [im["id"] for im in converted["images"]] == [im["id"] for im in coco_dict()["images"]]
    assert len(converted["annotations"]) == len(coco_dict()["annotations"])
