"""`fastinst export --model NAME [--weights PATH] [--format onnx|openvino] [--size H W | --dynamic] [--output FILE]`.

Writes an ONNX graph (normalised padded images -> `pred_logits`, `pred_masks`; see `fastinst.export`), or the same
graph as an OpenVINO IR (`--format openvino`: NAME.xml + NAME.bin), then runs it (onnxruntime, or OpenVINO in fp32)
next to PyTorch on one image and prints the max abs difference; exits non-zero if they disagree. Use the file with
`fastinst predict --backend onnxruntime --onnx FILE` or `--backend openvino --onnx FILE.xml`. An existing output file
is never replaced without `--overwrite` (the check runs before the export; the new file replaces the old one only once
complete).
"""

from __future__ import annotations

import argparse

from ..errors import FastInstError
from ._options import add_size


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
        default="onnx",
        choices=["onnx", "openvino"],
        help="onnx (default) or openvino (an IR: NAME.xml + NAME.bin, the same graph)",
    )
    size = p.add_mutually_exclusive_group()
    add_size(size, "fixed input size, multiples of 32 (default: a 480x640 photo at the test size, e.g. 576 768 for D1)")
    size.add_argument("--dynamic", action="store_true", help="free batch, height and width")
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
    import torch

    from ..export import check_size, default_size, export_onnx, export_openvino, verify_onnx, verify_runtime
    from ..factory import load_model
    from ..files import check_output

    if args.output:  # before the (slow) load and export: never onto the weights or an image, never into a folder
        check_output(args.output, inputs=[p for p in (args.weights, args.model, args.image) if p], kind="file")
    # a checkpoint from `fastinst train` brings its own config (classes, names, ids); no weights: random init, warned
    model = load_model(args.model, args.weights, device="cpu")
    cfg = model.cfg
    if args.size:
        check_size(args.size, cfg.model.size_divisibility)
    image = None
    if args.image:
        from ..data.images import read_image

        image = read_image(args.image)
    openvino = args.format == "openvino"
    output = check_output(args.output or f"{cfg.name}.{'xml' if openvino else 'onnx'}", kind="file")
    if openvino and output.suffix.lower() != ".xml":
        raise FastInstError(f"{output}: an OpenVINO IR is written as NAME.xml (+ NAME.bin beside it)")
    written = [output, output.with_suffix(".bin")] if openvino else [output]
    existing = [p for p in written if p.exists()]
    if existing and not args.overwrite:  # before the export (the default name is known once loaded)
        raise FastInstError(f"{existing[0]}: already exists; pass --overwrite to replace it, or another --output")
    size = (int(args.size[0]), int(args.size[1])) if args.size else None
    with torch.no_grad():
        if openvino:
            from ..runtimes import OpenVinoModel

            export_openvino(model, output, size=size, dynamic=args.dynamic, opset=args.opset)
        else:
            export_onnx(model, output, size=size, dynamic=args.dynamic, opset=args.opset)
        try:
            if openvino:
                diff = verify_runtime(model, OpenVinoModel(output, dtype="fp32"), image)
            else:
                diff = verify_onnx(model, output, image)
        except FastInstError:
            print(f"wrote {output} (failed the parity check)")
            raise
    kind = "dynamic" if args.dynamic else "x".join(map(str, args.size or default_size(cfg)))
    megabytes = sum(p.stat().st_size for p in written) / 1e6
    print(f"wrote {output} ({kind}, opset {args.opset}, {megabytes:.1f} MB)")
    print(f"{'OpenVINO (fp32)' if openvino else 'onnxruntime'} vs PyTorch: max abs diff {diff:.3g}")
    return 0
