"""The training loop: the official recipe (AdamW groups, multi-step LR, AMP), DDP, atomic checkpoints, exact resume.

`Trainer(cfg, model, loader_fn, output_dir).train()` runs `cfg.solver.max_iter` iterations. `loader_fn(start_iter)`
returns an iterator of batches whose content depends only on the stream position, so a resumed run (`resume=True`,
reading `last.pth`) sees exactly the batches the uninterrupted run would have seen; model, optimizer, scaler, EMA and
every RNG are restored too, so both end with the same weights.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import architecture_changes, load_checkpoint, read_checkpoint
from ..config import Config, to_dict
from ..errors import CheckpointError, FastInstError, note
from ..files import atomic_path
from ..log import say
from . import distributed as dist_utils
from .signals import StopSignals

_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm2d,
    nn.LocalResponseNorm,
)
_NO_DECAY = (*_NORMS, nn.Embedding)


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW (or SGD), one group per parameter (SPEC §4.4): backbone lr × multiplier; no weight decay on norms and
    embeddings."""
    s = cfg.solver
    groups, seen = [], set()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            lr = s.base_lr * (s.backbone_multiplier if "backbone" in mod_name else 1.0)
            wd = 0.0 if isinstance(module, _NO_DECAY) else s.weight_decay
            groups.append(
                {
                    "params": [p],
                    "lr": lr,
                    "weight_decay": wd,
                    "initial_lr": lr,
                    "name": f"{mod_name}.{p_name}".lstrip("."),
                }
            )
    if s.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=s.base_lr)
    if s.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=s.base_lr, momentum=0.9)
    raise FastInstError(f"solver.optimizer must be 'adamw' or 'sgd', got {s.optimizer!r}")


def lr_factor(iteration: int, cfg: Config) -> float:
    """Multi-step decay (gamma at each step) after an optional linear warm-up (the paper's warm-up is a no-op)."""
    s = cfg.solver
    factor = s.gamma ** sum(iteration >= step for step in s.steps)
    if s.warmup_iters and iteration < s.warmup_iters:
        factor *= (iteration + 1) / s.warmup_iters
    return factor


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`: never a half-written file."""
    path = Path(path)
    with atomic_path(path, fsync=True) as tmp:
        torch.save(obj, tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def rng_state() -> dict:
    legacy = np.random.get_state(legacy=True)
    if not isinstance(legacy, tuple):  # only a non-MT19937 global generator gives a dict
        raise TypeError(f"numpy's global generator is not MT19937 ({legacy.get('bit_generator')}); cannot save it")
    name, keys, pos, has_gauss, cached = legacy
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class EMA:
    """Exponential moving average of the weights (off by default, as in the paper)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)


def _clean_interrupted_writes(folder: Path) -> None:
    """Remove temp files of checkpoint writes a killed run left behind, and a half-written last line of
    metrics.jsonl."""
    for tmp in folder.glob(".*.tmp*"):
        tmp.unlink(missing_ok=True)
    log = folder / "metrics.jsonl"
    if log.is_file():
        data = log.read_bytes()
        if data and not data.endswith(b"\n"):
            log.write_bytes(data[: data.rfind(b"\n") + 1])


class NonFiniteLoss(FastInstError):
    """Raised when the loss stays NaN/Inf for too many consecutive steps."""


class Trainer:
    def __init__(
        self,
        cfg: Config,
        model: nn.Module,
        loader_fn: Callable[[int], Iterable[list[dict]]],
        output_dir: str | Path,
        device: str = "cpu",
        resume: bool = False,
        evaluate_fn: Callable[[nn.Module], dict] | None = None,
        rand=None,
        max_seconds: float | None = None,
        progress: bool = True,
    ):
        self.cfg, self.device = cfg, torch.device(device)
        self.output_dir = Path(output_dir)
        self.loader_fn, self.evaluate_fn, self.rand = loader_fn, evaluate_fn, rand
        self.max_seconds, self.progress = max_seconds, progress
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.model, cfg)
        use_cuda_amp = cfg.solver.amp and self.device.type == "cuda"
        self.amp_dtype = (
            torch.float16
            if use_cuda_amp
            else (torch.bfloat16 if cfg.solver.amp_cpu_bf16 and self.device.type == "cpu" else None)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_cuda_amp)
        if self.amp_dtype == torch.bfloat16:
            # oneDNN's bf16 convolutions run on channels_last activations without reorders: D1-R50 step 2.45 -> 2.05
            # s on AVX512-BF16; in fp32 it was slower (3.27 -> 3.52 s), so fp32 keeps NCHW (benchmarks/README.md)
            self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, cfg.solver.ema_decay) if cfg.solver.ema_decay > 0 else None
        self.iteration = 0
        self.nonfinite = 0
        self.bar = None  # the tqdm bar while train() runs
        self._stop = StopSignals(announce=self._announce_stop)  # a new one for each train()
        self.ddp = None
        if dist_utils.is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)
        if dist_utils.is_main():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            _clean_interrupted_writes(self.output_dir)
        if resume:
            self.resume()

    # -- checkpoints ----------------------------------------------------------------------------------------------

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.shadow if self.ema else None,
            "iteration": self.iteration,
            "rng": rng_state(),
            "config": to_dict(self.cfg),
            "nonfinite": self.nonfinite,
        }

    def save(self, name: str = "last.pth") -> Path | None:
        path = self.output_dir / name
        if dist_utils.is_main():
            save_atomic(self.state(), path)
        dist_utils.barrier()
        return path

    def resume(self) -> bool:
        """Continue from `output_dir/last.pth`: -> True, or False (with a note) when there is none to continue.

        Nothing to resume is a note and a fresh run in the same folder, not an error, because that is what `--resume`
        promises users of the official `train_net.py --resume` (detectron2 resumes if a checkpoint exists, else
        starts from the weights), and what a job script that always passes `--resume` needs: its first start and
        every restart after preemption run the same command line. The note makes a mistyped folder visible at once.
        A `last.pth` that is not a file, or that cannot be read, is an error (it must not be replaced)."""
        path = self.output_dir / "last.pth"
        if path.exists() and not path.is_file():
            raise CheckpointError(f"{path}: cannot resume: not a file")
        if not path.is_file():
            note(f"nothing to resume in {self.output_dir} (no last.pth there): starting a new run")
            return False
        try:  # the one checkpoint reader: safe loading, one-line errors; a broken last.pth is never replaced
            ckpt = read_checkpoint(path)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: cannot resume: {str(e).removeprefix(f'{path}: ')}") from None
        if not {"model", "optimizer", "scaler", "iteration", "rng"} <= ckpt.keys():
            raise CheckpointError(f"{path}: cannot resume: not a training checkpoint (no optimizer state or iteration)")
        changes = architecture_changes(ckpt.get("config"), self.cfg)
        if changes:  # e.g. an override that resizes the network: one line, not a page of size mismatches
            raise CheckpointError(
                f"{path}: cannot resume: the run's model differs from this one ({'; '.join(changes[:3])}); resume "
                "with the run's settings or train into a new --output"
            )
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError:  # shapes or names differ: the one-line message of loading any checkpoint
            load_checkpoint(self.model, {"model": ckpt["model"]}, label=f"{path}: cannot resume")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema and ckpt.get("ema"):
            self.ema.shadow = ckpt["ema"]
        self.iteration = int(ckpt["iteration"])
        self.nonfinite = int(ckpt.get("nonfinite", 0))
        set_rng_state(ckpt["rng"])
        self._log({"event": "resumed", "iter": self.iteration})
        if dist_utils.is_main():
            say(f"resumed from iteration {self.iteration} ({path})")
        return True

    # -- one step -------------------------------------------------------------------------------------------------

    def step(self, batch: list[dict]) -> dict[str, float]:
        """Forward, backward, optimizer step at the current iteration's learning rate; returns the loss terms."""
        factor = lr_factor(self.iteration, self.cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * factor
        self.model.train()
        net = self.ddp or self.model
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            losses = net(batch, rand=self.rand) if self.rand is not None else net(batch)
        total = sum(losses.values())
        bad = [k for k, v in losses.items() if not torch.isfinite(v).all()]
        self.optimizer.zero_grad(set_to_none=True)
        if bad:
            self.nonfinite += 1
            msg = (
                f"iteration {self.iteration}: non-finite loss in {', '.join(bad)} "
                f"({self.nonfinite} consecutive); step skipped"
            )
            self._log({"event": "nonfinite", "iter": self.iteration, "terms": bad})
            say(msg, stdout=True)
            if self.nonfinite > self.cfg.solver.max_nonfinite_steps:
                raise NonFiniteLoss(
                    f"training stopped at iteration {self.iteration}: {', '.join(bad)} was NaN/Inf "
                    f"for {self.nonfinite} consecutive steps; last good checkpoint: "
                    f"{self.output_dir / 'last.pth'}"
                )
            # keep DDP's collectives aligned: a zero loss still runs backward through every rank
            if self.ddp is not None:
                zero = torch.zeros((), device=self.device)
                (sum((p.sum() for p in self.model.parameters() if p.requires_grad), zero) * 0.0).backward()
                self.optimizer.zero_grad(set_to_none=True)
            return {k: float("nan") for k in losses}
        self.nonfinite = 0
        self.scaler.scale(total).backward()
        if self.cfg.solver.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.solver.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema:
            self.ema.update(self.model)
        out = {k: float(v.detach()) for k, v in losses.items()}
        out["total_loss"] = float(total.detach())
        return out

    # -- the loop -------------------------------------------------------------------------------------------------

    def train(self) -> dict:
        s = self.cfg.solver
        start = time.time()
        writer = self._tensorboard()
        bar = self.bar = None
        if self.progress and dist_utils.is_main():
            from tqdm import tqdm

            bar = self.bar = tqdm(total=s.max_iter, initial=self.iteration, desc="train", dynamic_ncols=True)
        last_metrics: dict = {}
        self._stop = StopSignals(announce=self._announce_stop)
        try:
            with self._stop:  # Ctrl-C / SIGTERM: finish the iteration, save last.pth, stop
                for batch in self.loader_fn(self.iteration):
                    if self.iteration >= s.max_iter:
                        break
                    losses = self.step(batch)
                    self.iteration += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(
                            loss=f"{losses.get('total_loss', float('nan')):.3f}",
                            lr=f"{self.optimizer.param_groups[-1]['lr']:.1e}",
                        )
                    if self.iteration % s.log_period == 0 or self.iteration == s.max_iter:
                        record = {
                            "iter": self.iteration,
                            "lr": self.optimizer.param_groups[-1]["lr"],
                            "time": round(time.time() - start, 2),
                            **losses,
                        }
                        self._log(record)
                        if writer:
                            for k, v in losses.items():
                                if math.isfinite(v):
                                    writer.add_scalar(f"train/{k}", v, self.iteration)
                    done = self.iteration >= s.max_iter or (
                        self.max_seconds is not None and time.time() - start > self.max_seconds
                    )
                    if s.checkpoint_period and self.iteration % s.checkpoint_period == 0 and not done:
                        self.save()
                    if self.evaluate_fn and s.eval_period and self.iteration % s.eval_period == 0 and not done:
                        last_metrics = self._evaluate(writer)
                    if done:
                        break
                    if self._stop_requested():
                        self._save_and_stop()
        finally:
            if bar is not None:
                bar.close()
        self.save()
        if self.evaluate_fn:
            last_metrics = self._evaluate(writer)
        if writer:
            writer.close()
        if dist_utils.is_main():
            self._plot()
        return {"iteration": self.iteration, "seconds": time.time() - start, **last_metrics}

    # -- Ctrl-C and SIGTERM: finish the iteration, save last.pth, stop --------------------------------------------

    def _announce_stop(self, name: str) -> None:
        """What the first SIGINT / SIGTERM says (`StopSignals` calls it): the loop stops after this iteration."""
        if dist_utils.is_main():
            say(f"\n{name}: stopping after this iteration and saving last.pth (Ctrl-C again to stop at once)")

    def _stop_requested(self) -> bool:
        """Whether any process was asked to stop (all ranks stop at the same iteration, or a save would hang)."""
        stop = self._stop.received is not None
        if dist_utils.is_distributed():
            import torch.distributed as dist

            flag = torch.tensor([float(stop)], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def _save_and_stop(self) -> None:
        path = self.save()
        self._log({"event": "interrupted", "iter": self.iteration})
        if dist_utils.is_main():
            say(f"interrupted at iteration {self.iteration}: saved {path} (continue with --resume)")
        raise KeyboardInterrupt

    def _evaluate(self, writer) -> dict:
        if self.evaluate_fn is None:
            return {}
        metrics = self.evaluate_fn(self.model) or {}
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        self._log({"iter": self.iteration, **scalars})
        if writer:
            for k, v in scalars.items():
                writer.add_scalar(f"eval/{k}", v, self.iteration)
        return metrics

    def _tensorboard(self):
        if not dist_utils.is_main():
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard missing: metrics.jsonl still has everything
            note("no TensorBoard logs (pip install 'fastinst[tensorboard]'); metrics.jsonl has every value")
            return None
        return SummaryWriter(str(self.output_dir / "tensorboard"))

    def _log(self, record: dict) -> None:
        if dist_utils.is_main():
            with open(self.output_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _plot(self) -> None:
        try:
            from ..visualize import plot_training_curves

            plot_training_curves(self.output_dir / "metrics.jsonl", self.output_dir / "curves.png")
        # plotting must never lose a finished run: no usable records (FastInstError), no matplotlib (ImportError),
        # an unwritable folder (OSError), data matplotlib refuses (ValueError, RuntimeError)
        except (FastInstError, ImportError, OSError, ValueError, RuntimeError) as e:
            hint = "; pip install 'fastinst[plots]'" if isinstance(e, ImportError) else ""
            say(f"could not plot training curves ({e}{hint})", level="warning", stdout=True)
