"""`fastinst export --model NAME [--weights PATH] [--format onnx|openvino] [--size H W | --dynamic] [--output FILE]`.

Writes an ONNX graph (normalised padded images -> `pred_logits`, `pred_masks`; see `fastinst.export`), or the same
graph as an OpenVINO IR (`--format openvino`: NAME.xml + NAME.bin), then runs it (onnxruntime, or OpenVINO in fp32)
next to PyTorch on one image and prints the max abs difference; exits non-zero if they disagree. Use the file with
`fastinst predict --backend onnxruntime --onnx FILE` or `--backend openvino --onnx FILE.xml`.

`--int8 --data DATA` writes an INT8 OpenVINO IR (`--format openvino` implied): NNCF's post-training quantization on
`--calibration` images (default 300) spread over split `--split` (default train) of DATA (any dataset layout, or a
folder of photos); it is checked by its instances against PyTorch fp32 on a few of those images. An INT8 IR takes any
input size unless `--size H W` fixes one: OpenVINO compiles it for each size it meets, so every photo runs at its own
padded size, as in PyTorch (a fixed IR pads smaller photos up to its size, which moves the results: -1.2 mask AP for
the demo model's square images in a 224x320 IR, and refuses larger ones). An existing output file
is never replaced without `--overwrite` (the check runs before the export; the new file replaces the old one only once
complete).
"""

from __future__ import annotations

import argparse

from ..errors import FastInstError
from ._options import add_size, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a variant to ONNX and check it against PyTorch",
        description="Export to ONNX (images -> pred_logits, pred_masks), then compare onnxruntime with "
        "PyTorch on one image.",
    )
    p.add_argument("--model", default="fastinst-d1-r50", help="variant name, alias or YAML config")
    p.add_argument("--weights", help="checkpoint file (default: random init, with a warning)")
    p.add_argument(
        "--format",
        choices=["onnx", "openvino"],
        help="onnx (default) or openvino (an IR: NAME.xml + NAME.bin, the same graph; the default with --int8)",
    )
    p.add_argument("--int8", action="store_true", help="quantize to INT8 (OpenVINO IR) on images from --data")
    p.add_argument("--data", help="--int8: dataset (folder, COCO json, YOLO yaml, short name) or folder of photos")
    p.add_argument("--split", default="train", help="--int8: split of --data to calibrate on (default train)")
    p.add_argument(
        "--calibration",
        type=positive_int,
        default=300,
        metavar="N",
        help="--int8: number of calibration images, spread over the split (default 300)",
    )
    size = p.add_mutually_exclusive_group()
    add_size(
        size,
        "fixed input size, multiples of 32 (default: a 480x640 photo at the test size, e.g. 576 768 for D1; "
        "with --int8: free sizes, as --dynamic)",
    )
    size.add_argument("--dynamic", action="store_true", help="free batch, height and width (the default with --int8)")
    p.add_argument(
        "--opset",
        type=int,
        default=18,
        choices=[17, 18, 19, 20],
        help="ONNX opset (default 18, torch.onnx dynamo exporter; 17 falls back to the legacy exporter)",
    )
    p.add_argument(
        "--output", help="output file (default <model>.onnx or .xml); an existing file is kept unless --overwrite"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--image", help="image for the parity check (default: a synthetic scene)")


def run(args: argparse.Namespace) -> int:
    if args.int8 and args.format == "onnx":
        raise FastInstError("--int8 writes an OpenVINO IR: use --format openvino (or leave --format out)")
    if args.int8 and not args.data:
        raise FastInstError("--int8 needs --data: the images to calibrate on (a dataset or a folder of photos)")
    if args.data and not args.int8:
        raise FastInstError("--data is for --int8 (the calibration images); add --int8 or leave --data out")
    fmt = args.format or ("openvino" if args.int8 else "onnx")
    import torch

    from ..export import (
        calibration_images,
        check_size,
        default_size,
        export_onnx,
        export_openvino,
        verify_onnx,
        verify_runtime,
    )
    from ..factory import load_model
    from ..files import check_output

    if args.output:  # before the (slow) load and export: never onto the weights or an image, never into a folder
        inputs = [p for p in (args.weights, args.model, args.image, args.data) if p]
        check_output(args.output, inputs=inputs, kind="file")
    calibration = calibration_images(args.data, args.split, args.calibration) if args.int8 else None
    # a checkpoint from `fastinst train` brings its own config (classes, names, ids); no weights: random init, warned
    model = load_model(args.model, args.weights, device="cpu")
    cfg = model.cfg
    if args.size:
        check_size(args.size, cfg.model.size_divisibility)
    image = None
    if args.image:
        from ..data.images import read_image

        image = read_image(args.image)
    openvino = fmt == "openvino"
    output = check_output(
        args.output or f"{cfg.name}{'-int8' if args.int8 else ''}.{'xml' if openvino else 'onnx'}", kind="file"
    )
    if openvino and output.suffix.lower() != ".xml":
        raise FastInstError(f"{output}: an OpenVINO IR is written as NAME.xml (+ NAME.bin beside it)")
    written = [output, output.with_suffix(".bin")] if openvino else [output]
    existing = [p for p in written if p.exists()]
    if existing and not args.overwrite:  # before the export (the default name is known once loaded)
        raise FastInstError(f"{existing[0]}: already exists; pass --overwrite to replace it, or another --output")
    size = (int(args.size[0]), int(args.size[1])) if args.size else None
    dynamic = args.dynamic or (args.int8 and size is None)  # an INT8 IR runs each photo at its own size (module doc)
    if calibration is not None:
        print(f"INT8: calibrating on {len(calibration)} images of {args.data} (split {args.split})", flush=True)
    with torch.no_grad():
        if openvino:
            from ..runtimes import OpenVinoModel

            export_openvino(model, output, size=size, dynamic=dynamic, opset=args.opset, calibration=calibration)
        else:
            export_onnx(model, output, size=size, dynamic=args.dynamic, opset=args.opset)
        try:
            if calibration is not None:
                check = _check_int8(model, OpenVinoModel(output), calibration[:: max(1, len(calibration) // 8)][:8])
            elif openvino:
                diff = verify_runtime(model, OpenVinoModel(output, dtype="fp32"), image)
            else:
                diff = verify_onnx(model, output, image)
        except FastInstError:
            print(f"wrote {output} (failed the parity check)")
            raise
    kind = "dynamic" if dynamic else "x".join(map(str, args.size or default_size(cfg)))
    megabytes = sum(p.stat().st_size for p in written) / 1e6
    precision = ", INT8" if args.int8 else ""
    print(f"wrote {output} ({kind}, opset {args.opset}{precision}, {megabytes:.1f} MB)")
    if calibration is not None:
        print(check)
    else:
        print(f"{'OpenVINO (fp32)' if openvino else 'onnxruntime'} vs PyTorch: max abs diff {diff:.3g}")
    return 0


INT8_AGREEMENT = 0.8  # the share of fp32 instances an INT8 IR must find again on the check images


def _check_int8(model, runtime, images) -> str:
    """The INT8 IR's instances (score >= 0.3) against PyTorch fp32's on `images`: the share of fp32 instances it finds
    again (same class, mask IoU >= 0.5). Raises FastInstError under `INT8_AGREEMENT`. (The raw outputs are no
    measure: a small change reorders the top-k queries.) Untrained weights find no instance: nothing to compare."""
    from ..engine.predictor import Predictor
    from ..engine.results import found_again

    reference, quantized = Predictor(model, dtype="fp32"), Predictor(runtime)
    found = total = 0
    for file in images:
        ref, got = reference.predict(file)[0], quantized.predict(file)[0]
        found += found_again(ref, got, iou=0.5)
        total += len(ref.scores)
    rest = getattr(runtime, "float_dtype", "fp32")
    what = f"INT8 ({rest} elsewhere) vs PyTorch fp32 on {len(images)} calibration images"
    if total == 0:
        return f"{what}: no instance >= 0.3 to compare (untrained weights?)"
    line = f"{what}: {found}/{total} instances found again (same class, mask IoU >= 0.5)"
    if found < INT8_AGREEMENT * total:
        raise FastInstError(f"{runtime.path}: {line}, under {INT8_AGREEMENT:.0%}")
    return line
