"""User-facing errors and notes: each carries one line naming the file or key and the problem."""

import os
import sys


def note(message: str, *, level: str = "note") -> None:
    """Print `level: message` as one line on stderr, in the main process only (`$RANK` unset or 0), so a run under
    torchrun says each thing once. For what the user should know about their data or options but that does not stop
    the run (`level="warning"` when results may suffer).

    While a tqdm progress bar is on screen the line goes through `tqdm.write`, which clears the bar, prints the line
    and redraws the bar below it, instead of gluing the line onto the bar's."""
    if os.environ.get("RANK", "0") not in ("0", ""):
        return
    line = f"{level}: {message}"
    bar = _live_bar_class()
    if bar is not None:
        bar.write(line, file=sys.stderr)
        sys.stderr.flush()
    else:
        print(line, file=sys.stderr, flush=True)


def _live_bar_class():
    """tqdm's bar class when a bar is open, else None. A bar exists only once tqdm has been imported, so this looks
    in `sys.modules` and imports nothing (this module stays cheap and torch-free for the CLI's --help)."""
    module = sys.modules.get("tqdm.std")
    cls = getattr(module, "tqdm", None)
    try:
        return cls if cls is not None and len(cls._instances) > 0 else None
    except (AttributeError, TypeError):  # a tqdm without the registry of open bars: plain print
        return None


class FastInstError(Exception):
    """Base class for mistakes in what the user handed us (files, names, options). The CLI prints it on one line."""


class CheckpointError(FastInstError):
    """A weights file that cannot be read or does not fit the model."""


class ImageReadError(FastInstError):
    """An image file that cannot be decoded."""


class DatasetError(FastInstError):
    """A dataset folder, annotation file or entry that cannot be used."""
