"""Options shared by the sub-command parsers. Torch-free on purpose: `fastinst <command> --help` imports only this,
the parsers and the standard library, so it answers at once."""

from __future__ import annotations

import argparse
import math

from ..config import DEVICE_CHOICES, DEVICE_PATTERN
from ..defaults import PRECISIONS


def device(value: str) -> str:
    """argparse type of `--device`: the name in lower case when it is one `resolve_device` takes, else a usage error."""
    name = value.strip().lower()
    if not DEVICE_PATTERN.fullmatch(name):
        raise argparse.ArgumentTypeError(f"invalid device {value!r}: use {DEVICE_CHOICES}")
    return name


def _int_at_least(value: str, least: int, wording: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < least:
        raise argparse.ArgumentTypeError(f"must be {wording}, got {value!r}")
    return number


def positive_int(value: str) -> int:
    """argparse type of sizes and counts that must be at least 1."""
    return _int_at_least(value, 1, "a positive integer")


def non_negative_int(value: str) -> int:
    """argparse type of counts where 0 means "none" or "the default" (`--threads 0`, `--warmup 0`, `--seed`)."""
    return _int_at_least(value, 0, "0 or more")


def _finite(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value!r}")
    return number


def positive_float(value: str) -> float:
    """argparse type of durations and budgets (seconds): a finite number above 0."""
    number = _finite(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value!r}")
    return number


def probability(value: str) -> float:
    """argparse type of score thresholds: a number from 0 to 1 (a percentage such as 30 is refused, not guessed)."""
    number = _finite(value)
    if not 0.0 <= number <= 1.0:
        hint = f" (for {number:g}% write {number / 100:g})" if 1 < number <= 100 else ""
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value!r}{hint}")
    return number


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        type=device,
        default="auto",
        help=f"{DEVICE_CHOICES}; auto picks CUDA, then MPS, then the CPU (default auto)",
    )


PRECISION_HELP = (
    "auto = fp16 on CUDA, bf16 on CPUs with bf16 hardware (AMX, AVX512-BF16), else fp32; fp16 runs as bf16 on a CPU"
)


def add_dtype(parser: argparse.ArgumentParser, default: str, help: str) -> None:
    """`--dtype`, the precision the model runs in (`fastinst.model.fuse.inference_dtype`)."""
    parser.add_argument("--dtype", default=default, choices=PRECISIONS, help=f"{help} ({PRECISION_HELP})")


def add_size(parser, help: str) -> None:
    """`--size H W`, two positive integers; `parser` may be a mutually exclusive group."""
    parser.add_argument("--size", nargs=2, type=positive_int, metavar=("H", "W"), help=help)


def add_backend(parser: argparse.ArgumentParser, what: str) -> None:
    """`--backend torch|onnxruntime|openvino` and `--onnx FILE` (`fastinst.factory.load_backend`); `what` names the
    PyTorch model the torch backend runs (e.g. "--model/--weights")."""
    parser.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnxruntime", "openvino"],
        help=f"run {what} in PyTorch (default), an exported --onnx file in onnxruntime, or OpenVINO (an --onnx "
        "file, ONNX or IR .xml; else the weights, exported once into the fastinst cache)",
    )
    parser.add_argument("--onnx", help="exported file (`fastinst export`): ONNX, or an OpenVINO IR .xml for openvino")
