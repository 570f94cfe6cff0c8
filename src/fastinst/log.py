"""fastinst's messages: the one `logging` logger, `"fastinst"`, and the line it writes.

Every note, warning and progress or result line the library has for its user goes through `say` (or
`fastinst.errors.note`, which calls it) to `LOGGER`. Set up here, once, when this module is first imported:

* `HANDLER` writes each record as one line, `level: message` (`note: ...`, `warning: ...`) or the bare message, on
  stderr, or on stdout for the lines the CLI has always printed there (`eval: ...`, the AP lines, the metric tables).
  It looks up `sys.stdout` / `sys.stderr` at each record, so a redirected stream gets the line. While a tqdm bar is on
  screen the line goes through `tqdm.write`, which clears the bar, writes the line and redraws the bar below it.
* a filter on the logger drops every record outside the main process (`$RANK` set and not 0): under torchrun each
  thing is said once.
* the logger's level is INFO (unless the user set one before importing fastinst) and it does not propagate, so a
  root handler (`logging.basicConfig`) does not repeat each line.

A program that uses fastinst as a library silences it with `logging.getLogger("fastinst").setLevel(logging.ERROR)`,
adds its own handler with `addHandler` (records carry the bare message; `record.prefix` is "note"/"warning"/""), or
takes the messages over entirely with `removeHandler(fastinst.log.HANDLER)` (and `propagate = True` to send them to
its root handlers).

`warnings.warn` stays for what a calling program did and can change, which it may filter or turn into an error with
the warnings machinery (`pytest.warns`, `-W error`): a model built without weights (`factory.load_model`), an opset
that needs the legacy ONNX exporter (`export.export_onnx`). What a run says about the user's data, options and
progress is a message of this logger. Standard library only: the CLI's `--help` imports it without torch.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

LOGGER = logging.getLogger("fastinst")

# the words `note(level=...)` takes that are more than information; any other word is INFO
LEVELS = {"warning": logging.WARNING, "error": logging.ERROR}


class LineFormatter(logging.Formatter):
    """`prefix: message` (the record's `prefix`, e.g. "note" or "warning") or the bare message without one."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        prefix = getattr(record, "prefix", "")
        return f"{prefix}: {message}" if prefix else message


class LineHandler(logging.Handler):
    """Writes each formatted record and a newline on stderr, or on stdout when the record's `stdout` is true; the
    stream is looked up per record (a redirection or pytest's capture gets the line), and a live tqdm bar is cleared
    and redrawn around it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            stream = sys.stdout if getattr(record, "stdout", False) else sys.stderr
            bar = live_bar_class()
            if bar is not None:
                bar.write(line, file=stream)
            else:
                stream.write(line + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's own rule: a failing handler reports and never raises
            self.handleError(record)


def main_process(record: logging.LogRecord) -> bool:
    """The logger's filter: records pass in the main process only (`$RANK` unset, empty or 0, as torchrun sets it)."""
    return os.environ.get("RANK", "0") in ("0", "")


def live_bar_class() -> Any:
    """tqdm's bar class when a bar is open, else None. A bar exists only once tqdm has been imported, so this looks
    in `sys.modules` and imports nothing (this module stays cheap and torch-free)."""
    module = sys.modules.get("tqdm.std")
    cls = getattr(module, "tqdm", None)
    try:
        return cls if cls is not None and len(cls._instances) > 0 else None
    except (AttributeError, TypeError):  # a tqdm without the registry of open bars: a plain write
        return None


def say(message: str, *, level: str = "", stdout: bool = False, stacklevel: int = 1) -> None:
    """One line for the user through `LOGGER`: `level: message` when `level` is given ("note", "warning": WARNING,
    "error": ERROR; any other word is INFO), else the bare message at INFO; on stdout when `stdout` (the result lines
    the CLI prints there), else stderr. `stacklevel` 1 names the caller in a record's `lineno` / `funcName`."""
    extra = {"prefix": level, "stdout": stdout}
    LOGGER.log(LEVELS.get(level, logging.INFO), message, extra=extra, stacklevel=stacklevel + 1)


def _set_up() -> logging.Handler:
    """The handler, the filter and the level, once (a reload of this module finds and keeps them)."""
    for handler in LOGGER.handlers:
        if type(handler).__name__ == LineHandler.__name__:
            return handler
    handler = LineHandler()
    handler.setFormatter(LineFormatter())
    LOGGER.addHandler(handler)
    LOGGER.addFilter(main_process)
    if LOGGER.level == logging.NOTSET:  # a level the user set before importing fastinst stays
        LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False
    return handler


HANDLER = _set_up()
