"""`fastinst <command>`: every sub-command lives in `fastinst.commands.<name>` with `add_parser` and `run`.

User mistakes (`FastInstError`) print one line `error: ...` and exit 2; `--debug` shows the traceback instead. So do
usage mistakes (an unknown option, a bad `--device`): argparse's message on one line, exit 2. Building the parser
imports every command module, so they import nothing heavy at module level: `--help` and `--version` never load torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import NoReturn

from . import __version__

COMMANDS = ["demo", "train", "eval", "predict", "export", "benchmark", "info", "convert", "app"]
_MODULES = {"eval": "evaluate"}
# optional dependencies (imported only where used) -> the extra that installs them, pyproject.toml
EXTRAS = {
    "av": "video",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "tensorboard": "tensorboard",
    "matplotlib": "plots",
}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, `error: <message> (see `<prog> --help`)`, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = Parser(prog="fastinst", description="FastInst instance segmentation in pure PyTorch.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    runners = {}
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"fastinst.commands.{_MODULES.get(name, name)}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("fastinst.commands"):
                continue  # command not built into this install
            raise
        mod.add_parser(sub)
        runners[name] = mod.run
    return parser, runners


def main(argv: list[str] | None = None) -> int:
    from .errors import FastInstError

    argv = sys.argv[1:] if argv is None else argv
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv)  # the words as given: `train --num-gpus N` passes them on to its processes
    if not args.command:
        parser.print_help()
        return 0
    if not args.debug:
        warnings.formatwarning = _warning_line  # warnings (ours and libraries') as one line, no source excerpt
    try:
        return int(runners[args.command](args) or 0)
    except FastInstError as e:
        if args.debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        missing = (e.name or "").partition(".")[0]
        if missing not in EXTRAS or args.debug:
            raise
        print(
            f"error: this needs {missing}, which is not installed: pip install 'fastinst[{EXTRAS[missing]}]'",
            file=sys.stderr,
        )
        return 2
    except OSError as e:  # ModuleNotFoundError is not one: it is handled above
        if e.filename is None or args.debug:  # no file or place named: a bug, show the traceback
            raise
        print(f"error: {e.filename}: {e.strerror or e}", file=sys.stderr)  # a full disk, a read-only mount, ...
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _warning_line(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def _one_line(e: Exception) -> str:
    """The user's message: an error raised in a DataLoader worker arrives wrapped in torch's "Caught X in DataLoader
    worker process N. Original Traceback ..." text, whose last line is the original `X: message`."""
    text = str(e)
    if "Original Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    head, _, rest = last.partition(": ")  # "fastinst.errors.DatasetError: <message>"
    return rest if head.rpartition(".")[2] == type(e).__name__ else last


if __name__ == "__main__":
    sys.exit(main())
