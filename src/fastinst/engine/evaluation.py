"""The one evaluation entry: `evaluate_split(data, ...)` scores a results file or a model on a dataset split.

    from fastinst.engine.evaluation import evaluate_split
    metrics = evaluate_split("datasets/coco", model="fastinst-d1-r50", weights="official", output="runs/eval")
    metrics["AP"], metrics["AP50"]                    # percent; runs/eval/metrics.json, the PR curves

`fastinst eval` and the official command line's `--eval-only` (`commands/_official.py`) call it: the dataset, the
model on its backend and precision (or the results json and what `fastinst predict` wrote beside it), the images
over torchrun's processes, COCO mask AP (`fastinst.engine.evaluator`), Boundary AP and, on a Cityscapes layout,
Cityscapes' own AP (`fastinst.engine.cityscapes_eval`), the report, and the AP lines on stdout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import note
from ..log import say
from .evaluator import evaluate_results, predict_dataset, warn_crowded_images, write_report


def evaluate_split(
    data: str | os.PathLike,
    *,
    results: str | os.PathLike | None = None,
    model: Any = None,
    weights: str | Path | None = None,
    split: str = "val",
    output: str | os.PathLike = "runs/eval",
    device: str = "auto",
    backend: str = "torch",
    dtype: str = "fp32",
    onnx: str | Path | None = None,
    max_images: int | None = None,
    boundary: bool = False,
) -> dict | None:
    """`fastinst eval` (and `fastinst train --eval-only`) as one call: COCO mask AP on `data`'s `split` of a results
    json (`results`) or of a model (`model` + `weights`, or `onnx`/`backend`) run over the split, written to
    `output` (`metrics.json`, the PR curves; for a model also `predictions.json`), the AP lines on stdout. -> the
    metrics, or None on a process other than rank 0 under torchrun (the images are split over the processes; rank 0
    scores everything)."""
    import time

    import torch

    from ..classes import match_model
    from ..data.jsonfiles import read_json
    from ..data.registry import load_dataset
    from ..errors import FastInstError
    from ..factory import load_backend, resolve_device
    from ..files import check_output, write_json
    from . import distributed as dist_utils
    from .cityscapes_eval import evaluate_cityscapes, is_cityscapes
    from .predictor import Predictor, describe_run, run_info

    if max_images is not None and max_images < 1:
        raise FastInstError(f"max_images must be at least 1, got {max_images}")
    start = time.time()
    out = check_output(output, inputs=[*([results] if results else []), data], kind="dir")
    dataset = load_dataset(data, split=split)
    found: str | list[dict]
    image_ids: list[int] | None = None
    category_ids: list[int] | None = None
    classes: list[dict] | None = None
    info: dict | None = None
    if results:
        found = str(results)
        side = Path(results).with_name(Path(results).stem + ".run.json")  # what `fastinst predict` wrote beside it
        record = read_json(side) if side.is_file() else {}
        record = record if isinstance(record, dict) else {}
        info = record.get("run") if isinstance(record.get("run"), dict) else None
        if isinstance(record.get("classes"), list):
            classes = [c for c in record["classes"] if isinstance(c, dict) and {"id", "name"} <= c.keys()]
        if info:
            say(f"eval: {results} from {describe_run({k: str(v) for k, v in info.items()})}", stdout=True)
    else:
        if not weights and not onnx:
            raise FastInstError("--model needs --weights PATH (a checkpoint file) or --weights official")
        where = resolve_device("cpu" if backend != "torch" else device)
        _rank, world, local = dist_utils.init_distributed(where.type)
        if where.type == "cuda" and world > 1:
            where = resolve_device(f"cuda:{local}")
        # torch: the PyTorch model; an exported network: its runtime's detect, in its precision (OpenVINO: dtype)
        net = load_backend(backend, model, weights, where, None, dtype, onnx)
        match = match_model(net, dataset, source=str(weights or onnx))  # the classes fit the split, before any image
        for line in match.notes(dataset.name):
            note(line)
        cfg = getattr(net, "cfg", None)
        queries = int(cfg.model.num_queries) if cfg is not None else 100
        if queries < 100:  # more than 100 is said by the scoring itself (COCO AP's 100 detections)
            ids = [r["image_id"] for r in dataset.records[:max_images]] if max_images else None
            warn_crowded_images(dataset.coco, ids, queries, f"the model's {queries} queries")
        runner: Any = net  # fp32: the official network; else `fastinst predict`'s fast path in that precision
        info = run_info(net, str(getattr(net, "dtype", "fp32")), str(getattr(net, "dtype_reason", "")))
        if dtype != "fp32" and isinstance(net, torch.nn.Module):  # the same `detect`, in that precision
            runner = Predictor(net, dtype=dtype)
            info = runner.run_info
        say(f"eval: {describe_run(info)}", stdout=True)
        workers = min(4, os.cpu_count() or 1)  # decoding overlaps the network
        evaluator = predict_dataset(
            runner, dataset, max_images, progress=True, num_workers=workers, category_ids=match.ids
        )
        found, category_ids = evaluator.results, match.shared
        if not dist_utils.is_main():
            return None
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "predictions.json", found)
        # a part of the split: score those images; the whole split: every ground-truth image, as pycocotools does
        image_ids = sorted(set(evaluator.image_ids)) if max_images is not None else None
    # entries with file_name (fastinst predict --save-json) are matched to the split's images by it, never by position
    metrics = evaluate_results(
        found,
        dataset.coco,
        image_ids=image_ids,
        image_root=dataset.image_root,
        boundary=boundary,
        category_ids=category_ids,
        classes=classes,
    )
    if info:
        metrics["run"] = info
    if is_cityscapes(dataset):  # Cityscapes' own AP (its instance PNGs, its rules) beside COCO AP
        metrics["cityscapes"] = evaluate_cityscapes(found, dataset, image_ids=image_ids)
    target = write_report(metrics, out)
    say(
        f"{dataset.name}: mask AP {metrics['AP']:.2f} (AP50 {metrics['AP50']:.2f}, AP75 {metrics['AP75']:.2f}) "
        f"in {time.time() - start:.0f} s; wrote {target} and the PR curves",
        stdout=True,
    )
    if "boundary" in metrics:
        m = metrics["boundary"]
        say(f"{dataset.name}: boundary AP {m['AP']:.2f} (AP50 {m['AP50']:.2f}, AP75 {m['AP75']:.2f})", stdout=True)
    if "cityscapes" in metrics:
        m = metrics["cityscapes"]
        say(
            f"{dataset.name}: Cityscapes AP {m['AP']:.2f} (AP50 {m['AP50']:.2f}) over the 8 instance classes",
            stdout=True,
        )
    return metrics
