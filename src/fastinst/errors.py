"""User-facing errors and notes: each carries one line naming the file or key and the problem (notes go through
the `fastinst` logger, `fastinst.log`)."""

from typing import Any

from .log import say


def shown(value: Any, limit: int = 40) -> str:
    """`repr(value)` cut to `limit` characters: a bad value named in a one-line message, whatever its size (a large
    dict or list is named by its type instead of being repr'd whole)."""
    text = repr(value) if not isinstance(value, (dict, list)) or len(value) < 100 else f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def note(message: str, *, level: str = "note") -> None:
    """Say `level: message` as one line on stderr, in the main process only (`$RANK` unset or 0), so a run under
    torchrun says each thing once. For what the user should know about their data or options but that does not stop
    the run (`level="warning"` when results may suffer). It goes through the `fastinst` logger (`fastinst.log`: a
    library user silences or redirects it there), clearing and redrawing a live tqdm bar around the line."""
    say(message, level=level, stacklevel=2)


class FastInstError(Exception):
    """Base class for mistakes in what the user handed us (files, names, options). The CLI prints it on one line."""


class CheckpointError(FastInstError):
    """A weights file that cannot be read or does not fit the model."""


class ImageReadError(FastInstError):
    """An image file that cannot be decoded."""


class DatasetError(FastInstError):
    """A dataset folder, annotation file or entry that cannot be used."""
