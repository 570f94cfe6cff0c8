"""Trainer: parameter groups, schedule, atomic checkpoints, exact resume, NaN handling, 2-process DDP equivalence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastinst import build_model
from fastinst.config import apply_overrides, get_config
from fastinst.engine.trainer import NonFiniteLoss, Trainer, build_optimizer, lr_factor

TINY = [
    "model.backbone_norm=FrozenBN",
    "model.hidden_dim=32",
    "model.num_queries=9",
    "model.num_aux_queries=2",
    "model.nheads=2",
    "model.dim_feedforward=32",
    "model.num_classes=3",
    "loss.num_points=256",
    "solver.ims_per_batch=2",
    "solver.max_iter=4",
    "solver.steps=[3]",
    "solver.checkpoint_period=2",
    "solver.log_period=1",
    "solver.amp=false",
]


def tiny_cfg(extra=()):
    return apply_overrides(get_config("fastinst-demo"), TINY + list(extra))


def make_sample(position: int, size=(64, 64)) -> dict:
    """A deterministic training sample for stream position `position`: two rectangles of known classes."""
    g = torch.Generator().manual_seed(1000 + position)
    h, w = size
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    y, x = int(torch.randint(0, h // 2, (1,), generator=g)), int(torch.randint(0, w // 2, (1,), generator=g))
    masks[0, y : y + h // 3, x : x + w // 3] = True
    masks[1, h // 2 :, w // 2 :] = True
    image[:, masks[0]] = 250
    return {
        "image": image,
        "height": h,
        "width": w,
        "instances": {"labels": torch.tensor([position % 3, (position + 1) % 3]), "masks": masks},
    }


def stream(batch_size: int, rank: int = 0, world: int = 1):
    """loader_fn: global batch i holds positions [i*B*world, ...); rank r takes every world-th of them."""

    def loader(start_iter: int):
        it = start_iter
        while True:
            base = it * batch_size * world
            yield [make_sample(base + j) for j in range(rank, batch_size * world, world)]
            it += 1

    return loader


def row_rand(*shape, device=None):
    """Point draws that are the same for every row (image / mask): makes per-rank and global sampling agree."""
    g = torch.Generator().manual_seed(shape[-2])
    row = torch.rand(shape[-2:], generator=g)
    return row.expand(shape).contiguous().to(device or "cpu")


def test_param_groups_and_schedule():
    cfg = get_config("fastinst-d1-r50")
    opt = build_optimizer(build_model(cfg), cfg)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["backbone.stem.conv1.weight"]["lr"] == pytest.approx(1e-5)
    assert by_name["sem_seg_head.predictor.meta_pos_embed"]["weight_decay"] == 0.05
    assert by_name["sem_seg_head.predictor.empty_query_features.weight"]["weight_decay"] == 0.0
    assert by_name["sem_seg_head.pixel_decoder.adapter_1.norm.weight"]["weight_decay"] == 0.0
    assert by_name["sem_seg_head.predictor.decoder_query_norm_layers.0.bias"]["weight_decay"] == 0.0
    assert by_name["sem_seg_head.predictor.class_embed_layers.0.layers.0.bias"]["weight_decay"] == 0.05
    assert lr_factor(0, cfg) == 1.0 and lr_factor(327778, cfg) == pytest.approx(0.1)
    assert lr_factor(368749, cfg) == pytest.approx(0.01)


def _train(tmp: Path, iters: int, resume: bool = False, max_iter: int = 4) -> Trainer:
    torch.manual_seed(0)
    cfg = tiny_cfg([f"solver.max_iter={max_iter}"])
    t = Trainer(cfg, build_model(cfg), stream(2), tmp, resume=resume, progress=False)
    t.cfg.solver.max_iter = iters if not resume else max_iter
    t.train()
    return t


def test_stop_and_resume_gives_identical_weights(tmp_path):
    full = _train(tmp_path / "full", 4)
    part = tmp_path / "part"
    _train(part, 2)  # stops after 2 iterations (checkpoint written)
    resumed = _train(part, 4, resume=True)  # picks up at iteration 2
    assert resumed.iteration == 4
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (part / "last.pth").is_file() and not list(part.glob(".*.tmp*"))
    assert (part / "metrics.jsonl").read_text().count('"event": "resumed"') == 1


def test_bf16_autocast_on_cpu_trains_channels_last_and_resumes(tmp_path):
    """`solver.amp_cpu_bf16=true`: the step runs under bf16 autocast with the model in channels_last (measured faster
    only together, benchmarks/README.md), its losses stay finite, and its checkpoint resumes exactly."""
    cfg = tiny_cfg(["solver.amp_cpu_bf16=true", "solver.max_iter=2"])
    torch.manual_seed(0)
    t = Trainer(cfg, build_model(cfg), stream(2), tmp_path, progress=False)
    assert t.amp_dtype == torch.bfloat16
    conv = t.model.backbone.stem.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    t.train()
    trained = {k: v.clone() for k, v in t.model.state_dict().items()}
    fresh = Trainer(cfg, build_model(cfg), stream(2), tmp_path, resume=True, progress=False)
    assert fresh.iteration == 2
    for k, v in fresh.model.state_dict().items():
        assert torch.equal(v, trained[k]), k
    losses = fresh.step(next(stream(2)(2)))
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses


def test_fp32_training_keeps_nchw(tmp_path):
    t = Trainer(tiny_cfg(), build_model(tiny_cfg()), stream(2), tmp_path, progress=False)
    assert t.amp_dtype is None and t.model.backbone.stem.conv1.weight.is_contiguous()


def test_nonfinite_loss_stops_with_clear_message(tmp_path):
    cfg = tiny_cfg(["solver.max_nonfinite_steps=1", "solver.max_iter=6", "solver.checkpoint_period=1"])
    torch.manual_seed(0)
    model = build_model(cfg)
    good = stream(2)

    def loader(start):
        for i, batch in enumerate(good(start)):
            if start + i >= 2:  # from iteration 2 on, poison the images -> NaN everywhere
                for d in batch:
                    d["image"] = d["image"].float() * float("nan")
            yield batch

    t = Trainer(cfg, model, loader, tmp_path, progress=False)
    with pytest.raises(NonFiniteLoss, match=r"iteration 3: .*loss_\w+.*last good checkpoint"):
        t.train()
    ckpt = torch.load(tmp_path / "last.pth", weights_only=True)
    assert ckpt["iteration"] == 3  # the skipped step at iteration 2 left the weights untouched
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


DDP_SCRIPT = r"""
import sys, torch
sys.path.insert(0, {tests!r})
from engine.test_trainer import tiny_cfg, stream, row_rand
from fastinst import build_model
from fastinst.engine import distributed as du
from fastinst.engine.trainer import Trainer
rank, world, _ = du.init_distributed("cpu")
torch.manual_seed(0)
cfg = tiny_cfg(["solver.max_iter=1", "solver.optimizer=sgd", "solver.base_lr=0.05"])
t = Trainer(cfg, build_model(cfg), stream(1, rank, world), {out!r}, rand=row_rand, progress=False)
t.train()
"""


def test_two_process_ddp_step_equals_single_process(tmp_path):
    # SGD: AdamW's first step is lr * sign(grad), which turns float noise in gradients that are zero in exact
    # arithmetic (e.g. attention key biases) into lr-sized differences; SGD shows the gradients themselves agree.
    torch.manual_seed(0)
    cfg = tiny_cfg(["solver.max_iter=1", "solver.optimizer=sgd", "solver.base_lr=0.05"])
    single = Trainer(cfg, build_model(cfg), stream(2), tmp_path / "single", rand=row_rand, progress=False)
    single.train()
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parents[1]), out=str(tmp_path / "ddp")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29531",
        str(script),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp" / "last.pth", weights_only=True)["model"]
    ref = single.model.state_dict()
    diffs = {k: float((ddp[k].float() - ref[k].float()).abs().max()) for k in ref}
    worst = max(diffs.values())
    torch.manual_seed(0)
    init = build_model(cfg).state_dict()
    moved = max(float((ref[k].float() - init[k].float()).abs().max()) for k in ref)
    assert moved > 1e-4  # the step really changed the weights
    assert worst <= 1e-5, worst
