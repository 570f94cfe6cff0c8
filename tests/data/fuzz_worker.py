"""Run `fastinst.cli.main` on many command lines in one process under a memory limit (tests/data/test_fuzz_readers.py).

    python fuzz_worker.py JOBS.json RESULTS.jsonl HEADROOM_MB CASE_TIMEOUT_S

JOBS.json is a list of `{"id": str, "argv": [...], "cleanup": [paths]}`; the first job is a warm-up (an unmutated
file) run before the limit is set. Then the address space is limited (RLIMIT_AS) to what the process has mapped at
its peak plus HEADROOM_MB, so that a reader allocating what a file claims (a 1e9 x 1e9 mask) fails here instead of
exhausting the machine. For each job a line `{"id", "started": true}` is appended to RESULTS.jsonl before it runs and
`{"id", "rc", "stderr", "crash", "seconds"}` after (crash: the traceback of an exception that escaped `main`); a
started job without its result line killed the process (the parent restarts the worker after it). A job still
running after CASE_TIMEOUT_S seconds is stopped and reported as a crash ("timed out").
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import shutil
import signal
import sys
import time
import traceback


class CaseTimeout(BaseException):  # not an Exception: nothing in fastinst may catch it
    """Raised by the alarm when a job runs past its time."""


def _alarm(signum, frame):
    raise CaseTimeout()


def _vm_peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmPeak:"):
                return int(line.split()[1]) * 1024
    return 0


def _allocate(mb: int) -> int:
    """The job `["--fuzz-allocate-mb", N]`: allocate and touch N MiB (the test that the memory limit holds)."""
    import numpy as np

    np.ones(mb * 2**20, np.uint8)
    return 0


def _run(argv: list[str]) -> tuple[int | None, str, str | None]:
    from fastinst.cli import main

    if argv[:1] == ["--fuzz-allocate-mb"]:
        main = lambda _: _allocate(int(argv[1]))  # noqa: E731

    err, out = io.StringIO(), io.StringIO()
    crash = None
    rc: int | None = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse: a usage error is an exit, not a crash
            rc = e.code if isinstance(e.code, int) else 1
        except CaseTimeout:
            crash = "timed out"
        except BaseException:  # noqa: BLE001 - anything escaping main is what the fuzz test looks for
            crash = traceback.format_exc()
    return rc, err.getvalue(), crash


def main() -> None:
    jobs_path, results_path, headroom_mb, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    signal.signal(signal.SIGALRM, _alarm)
    with open(jobs_path) as f:
        jobs = json.load(f)
    limited = False
    with open(results_path, "a") as results:
        for n, job in enumerate(jobs):
            if n > 0 and not limited:
                limit = _vm_peak() + headroom_mb * 2**20
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
                limited = True
            results.write(json.dumps({"id": job["id"], "started": True}) + "\n")
            results.flush()
            start = time.perf_counter()
            signal.alarm(timeout)
            rc, err, crash = _run(job["argv"])
            signal.alarm(0)
            line = {"id": job["id"], "rc": rc, "stderr": err[-4000:], "crash": crash, "seconds": 0.0}
            line["seconds"] = round(time.perf_counter() - start, 3)
            results.write(json.dumps(line) + "\n")
            results.flush()
            for p in job.get("cleanup", []):
                if os.path.isdir(p):
                    shutil.rmtree(p, ignore_errors=True)
                elif os.path.exists(p):
                    os.remove(p)


if __name__ == "__main__":
    main()
