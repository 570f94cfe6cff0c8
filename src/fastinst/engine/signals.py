"""The one stop-signal handler: while active, SIGINT (Ctrl-C) and SIGTERM ask the running loop to stop cleanly.

`fastinst predict` on a live source ends its overlay; training (`Trainer.train`) finishes the current iteration and
saves `last.pth`. A second Ctrl-C interrupts at once. Torch-free and cheap, so that a command's parser can import it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


class StopSignals:
    """While active, SIGINT (Ctrl-C) and SIGTERM end a loop cleanly instead of killing the run: the handler only
    keeps the signal's name in `received` (and calls `announce(name)` once, to say what happens next), and the loop
    checks `received` where stopping is safe. A second Ctrl-C interrupts at once (`KeyboardInterrupt`). Only the
    main thread can install handlers; elsewhere this does nothing (signals go to the main thread)."""

    def __init__(self, announce: Callable[[str], None] | None = None) -> None:
        self.received: str | None = None
        self.announce = announce
        self._saved: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = signal.Signals(signum).name
        if self.announce is not None:
            self.announce(self.received)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()
