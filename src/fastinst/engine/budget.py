"""`BudgetTrainer`: a `Trainer` whose iteration count is fitted, while it runs, to a wall-clock deadline.

`fastinst demo` trains with it so that the demo ends on time on any machine; it reads time only through `clock`, so a
test can drive it with a fake clock and get exact arithmetic.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .trainer import Trainer


class BudgetTrainer(Trainer):
    """A `Trainer` whose schedule is fitted to a time budget while it runs.

    Every 10 iterations until the LR step, `max_iter` is set to what the measured time per iteration (data loading
    included) lets finish by `deadline` (a value of `clock`, `time.perf_counter` unless another clock is given),
    capped at the configured `max_iter` and at least `min_iter`, and the LR step to `step_fraction` of it; after
    the step the schedule is fixed. Iterations 0-1 are not timed (warm-up); the probe starts at iteration 2.
    """

    def __init__(
        self,
        *args,
        deadline: float,
        step_fraction: float = 0.8,
        min_iter: int = 50,
        clock: Callable[[], float] = time.perf_counter,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.deadline, self.step_fraction, self.min_iter = deadline, step_fraction, min_iter
        self.clock = clock
        self.cap = self.cfg.solver.max_iter
        self._t0 = 0.0

    def step(self, batch: list[dict]) -> dict[str, float]:
        s, now = self.cfg.solver, self.clock()
        if self.iteration == 2:  # iterations 0-1 warm up the allocator and thread pools
            self._t0 = now
        elif self.iteration > 2 and self.iteration % 10 == 0 and self.iteration < s.steps[0]:
            per_iter = (now - self._t0) / (self.iteration - 2)
            # a clock that did not move (too coarse) measures nothing: then only the cap limits the run
            fit = self.iteration + int(max(self.deadline - now, 0.0) / per_iter) if per_iter > 0 else self.cap
            s.max_iter = min(self.cap, max(self.min_iter, fit))
            s.steps = (max(self.iteration, int(s.max_iter * self.step_fraction)),)
            if self.bar is not None:
                self.bar.total = s.max_iter
                self.bar.refresh()
        return super().step(batch)
