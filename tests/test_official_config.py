"""The official repository's YAML configs and KEY VALUE pairs resolve to our typed `Config`.

The five official files (`../shared/official-configs`, read from there, never copied into the project) must resolve
to exactly our variant of the same name on every field they set; the rest checks the reader's rules on files and
pairs this test writes: `_BASE_` chains relative to each file, yacs-style values, notes for keys without meaning,
errors (with "did you mean") for unknown keys and for values fastinst does not implement, and the dataset names.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fastinst.config import PUBLISHED, ConfigError, get_config
from fastinst.data.registry import datasets_root, load_dataset, official_dataset
from fastinst.errors import DatasetError
from fastinst.official_config import KEYS, load_official_config, parse_opts, read_official_yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from makers import coco_dict, make_ade20k, make_cityscapes, make_coco

OFFICIAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "official-configs" / "coco" / "instance-segmentation"
needs_official = pytest.mark.skipif(not OFFICIAL.is_dir(), reason=f"no official configs under {OFFICIAL}")
BASE = OFFICIAL / "Fast-COCO-InstanceSegmentation.yaml"


def _field(cfg, dotted: str):
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


@needs_official
@pytest.mark.parametrize("name", PUBLISHED)
def test_every_official_config_resolves_to_our_variant(name):
    run = load_official_config(OFFICIAL / f"{name}.yaml")
    ours = get_config(name)
    assert run.cfg.name == name
    # the file sets the network, the loss, the input sizes and the whole recipe: none of it is left to defaults
    sections = {f.split(".")[0] for f in run.fields}
    assert sections == {"model", "loss", "input", "solver"}, sections
    assert len(run.fields) >= 40
    differ = {f: (_field(run.cfg, f), _field(ours, f)) for f in run.fields if _field(run.cfg, f) != _field(ours, f)}
    assert not differ, differ
    assert run.cfg == ours  # and nothing else moved either
    assert run.train_datasets == ("coco_2017_train",) and run.test_datasets == ("coco_2017_val",)
    assert run.output_dir.startswith("output/fastinst_")
    # the variant-defining keys really came from the file chain
    assert run.fields["model.dec_layers"] == "MODEL.FASTINST.DEC_LAYERS"
    assert run.fields["input.min_size_test"] == "INPUT.MIN_SIZE_TEST"
    assert run.fields["solver.warmup_iters"] == "SOLVER.WARMUP_ITERS"  # WARMUP_FACTOR 1.0: no warm-up


@needs_official
def test_official_weights_and_backbones_per_variant():
    weights = {n: load_official_config(OFFICIAL / f"{n}.yaml").weights for n in PUBLISHED}
    assert weights["fastinst_R50_ppm-fpn_x1_576"] == "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
    assert weights["fastinst_R101_ppm-fpn_x3_640"] == "checkpoints/R-101.pkl"
    assert weights["fastinst_R50-vd-dcn_ppm-fpn_x3_640"] == "checkpoints/resnet50d_ra2-464e36ba.pkl"
    vd = load_official_config(OFFICIAL / "fastinst_R50-vd-dcn_ppm-fpn_x1_576.yaml").cfg.model
    assert (vd.backbone, vd.deform_stages) == ("resnet_vd", (False, False, True, True))


@needs_official
def test_keys_without_meaning_make_one_note_line():
    note = load_official_config(OFFICIAL / "fastinst_R50_ppm-fpn_x1_576.yaml").note()
    assert note is not None and "\n" not in note
    assert note.startswith("note: ignored (no meaning in fastinst): ")
    for key in ("VERSION", "MODEL.RESNETS.STEM_TYPE", "MODEL.RESNETS.RES5_MULTI_GRID"):
        assert key in note
    run = load_official_config(OFFICIAL / "fastinst_R50_ppm-fpn_x1_576.yaml", ["CUDNN_BENCHMARK", "True"])
    assert "CUDNN_BENCHMARK" in str(run.note())


@needs_official
def test_command_line_pairs_override_the_file_like_yacs():
    opts = ["MODEL.WEIGHTS", "/x/model.pth", "SOLVER.IMS_PER_BATCH", "8", "INPUT.MIN_SIZE_TRAIN", "(64, 96)"]
    opts += ["SOLVER.BASE_LR", "2e-4", "OUTPUT_DIR", "out", "MODEL.FASTINST.DEC_LAYERS", "3"]
    run = load_official_config(OFFICIAL / "fastinst_R50_ppm-fpn_x1_576.yaml", opts)
    assert run.weights == "/x/model.pth" and run.output_dir == "out"
    s, i = run.cfg.solver, run.cfg.input
    assert (s.ims_per_batch, s.base_lr, i.min_size_train, run.cfg.model.dec_layers) == (8, 2e-4, (64, 96), 3)
    assert i.min_size_test == 576  # untouched keys keep the file's value
    assert parse_opts(["INPUT.MIN_SIZE_TRAIN", "(64,)", "MODEL.WEIGHTS", ""]) == {
        "INPUT.MIN_SIZE_TRAIN": (64,),
        "MODEL.WEIGHTS": "",
    }
    with pytest.raises(ConfigError, match="needs a value"):
        parse_opts(["SOLVER.MAX_ITER"])


@needs_official
def test_unknown_keys_say_what_was_meant(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_BASE_: {BASE}\nMODEL:\n  FASTINST:\n    DEC_LAYER: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key MODEL\.FASTINST\.DEC_LAYER \(did you mean "):
        load_official_config(bad)
    with pytest.raises(ConfigError, match=r"did you mean SOLVER\.IMS_PER_BATCH\?"):
        load_official_config(BASE, ["SOLVER.IMS_PER_BATC", "8"])


def test_values_fastinst_does_not_implement_are_errors(tmp_path):
    for opts, match in [
        (["INPUT.FORMAT", "BGR"], r"INPUT\.FORMAT 'BGR' is not supported; fastinst implements 'RGB'"),
        (["MODEL.BACKBONE.NAME", "build_swin_backbone"], r"MODEL\.BACKBONE\.NAME .*build_swin_backbone"),
        (["MODEL.RESNETS.STRIDE_IN_1X1", "True"], r"STRIDE_IN_1X1 True is not supported"),
        (["MODEL.SEM_SEG_HEAD.CONVS_DIM", "128"], r"CONVS_DIM 128 is not supported"),
        (["MODEL.FASTINST.DEC_LAYERS", "two"], r"MODEL\.FASTINST\.DEC_LAYERS 'two': .*integer"),
        (["SOLVER.WARMUP_ITERS", "ten"], r"SOLVER\.WARMUP_ITERS 'ten': expected a number"),
        (["SOLVER.CLIP_GRADIENTS.ENABLED", "yes"], r"ENABLED 'yes': expected true or false"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_official_config(None, opts)


def test_base_chains_are_relative_to_each_file_and_loops_are_errors(tmp_path):
    (tmp_path / "common").mkdir()
    (tmp_path / "variants").mkdir()
    (tmp_path / "common" / "base.yaml").write_text("MODEL:\n  FASTINST:\n    DEC_LAYERS: 3\n    NHEADS: 4\n")
    (tmp_path / "common" / "mid.yaml").write_text("_BASE_: base.yaml\nSOLVER:\n  STEPS: (10, 20)\n")
    child = tmp_path / "variants" / "child.yaml"
    child.write_text("_BASE_: ../common/mid.yaml\nMODEL:\n  FASTINST:\n    NHEADS: 2\n")
    flat = read_official_yaml(child)
    assert flat == {"MODEL.FASTINST.DEC_LAYERS": 3, "MODEL.FASTINST.NHEADS": 2, "SOLVER.STEPS": (10, 20)}
    run = load_official_config(child)
    assert (run.cfg.model.dec_layers, run.cfg.model.nheads, run.cfg.solver.steps) == (3, 2, (10, 20))
    assert run.cfg.name == "child"
    (tmp_path / "common" / "base.yaml").write_text("_BASE_: ../variants/child.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        read_official_yaml(child)


def test_warm_up_and_clipping_fold_into_our_fields():
    run = load_official_config(None, ["SOLVER.WARMUP_FACTOR", "0.001", "SOLVER.WARMUP_ITERS", "100"])
    assert run.cfg.solver.warmup_iters == 100
    run = load_official_config(None, ["SOLVER.WARMUP_FACTOR", "1.0", "SOLVER.WARMUP_ITERS", "10"])
    assert run.cfg.solver.warmup_iters == 0  # detectron2 ramps from the factor: 1.0 is no warm-up
    clip = ["SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model"]
    run = load_official_config(None, [*clip, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.01"])
    assert run.cfg.solver.clip_grad_norm == 0.01
    with pytest.raises(ConfigError, match="full_model"):
        load_official_config(None, ["SOLVER.CLIP_GRADIENTS.ENABLED", "True"])


def test_every_mapped_key_names_a_real_field():
    cfg = get_config("fastinst_R50_ppm-fpn_x1_576")
    for key, spec in KEYS.items():
        target = getattr(spec, "target", None)
        if target is not None:
            _field(cfg, target)  # raises AttributeError for a typo in the table
            assert key.isupper()


def test_official_dataset_names_resolve_under_the_datasets_variables(tmp_path, monkeypatch):
    d2, ours = tmp_path / "d2", tmp_path / "ours"
    make_coco(d2 / "coco", "train2017", coco_dict())
    make_coco(d2 / "coco", "val2017", coco_dict())
    make_cityscapes(d2 / "cityscapes", "val")
    make_ade20k(d2, "validation")
    monkeypatch.delenv("FASTINST_DATASETS", raising=False)
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert datasets_root() == Path("datasets")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(d2))
    assert official_dataset("coco_2017_val") == (d2 / "coco", "val")
    assert official_dataset("not_a_name") is None
    train = load_dataset("coco_2017_train", split="ignored: the name fixes the split")
    assert train.name == "coco_train2017" and len(train.records) == 2
    assert load_dataset("cityscapes_fine_instance_seg_val").name == "cityscapes_val"
    assert load_dataset("ade20k_instance_val").name == "ade20k_val"
    with pytest.raises(DatasetError, match=r"gtFine/train: no \*/\*_instanceIds\.png"):
        load_dataset("cityscapes_fine_instance_seg_train")
    monkeypatch.setenv("FASTINST_DATASETS", str(ours))  # ours wins over detectron2's
    with pytest.raises(DatasetError, match=rf"coco_2017_val: expected its data in {ours / 'coco'}"):
        load_dataset("coco_2017_val")


def test_the_docs_name_every_mapped_and_fixed_key():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "official.md").read_text()
    for key, spec in KEYS.items():
        if type(spec).__name__ in ("_To", "_Only"):
            assert key.rsplit(".", 1)[-1] in docs, key
