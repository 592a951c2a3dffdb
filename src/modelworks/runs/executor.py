"""Executors feed jobs to workers and hand back results as they finish."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from modelworks.runs.worker import execute

Job = dict[str, Any]
Result = dict[str, Any]


class Executor(Protocol):
    name: str

    def run(self, jobs: list[Job]) -> Iterator[Result]:
        """Run jobs; yield each result as it finishes (in any order)."""
        ...


def _warm() -> None:
    """Worker initializer: one BLAS thread per worker, heavy imports done once."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    import sklearn.base  # noqa: F401
    import skops.io  # noqa: F401


def _context() -> Any:
    # fork keeps the parent's imports warm; where fork is unavailable fall back to spawn.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


class LocalExecutor:
    """A pool of worker processes on this machine."""

    name = "local"

    def __init__(self, workers: int, fn: Callable[[Job], Result] = execute) -> None:
        self.workers = max(1, workers)
        self.fn = fn

    def run(self, jobs: list[Job]) -> Iterator[Result]:
        if not jobs:
            return
        if self.workers == 1 or len(jobs) == 1:
            _warm_inline()
            for job in jobs:
                yield self.fn(job)
            return
        with ProcessPoolExecutor(self.workers, mp_context=_context(), initializer=_warm) as pool:
            pending: dict[Future[Result], Job] = {pool.submit(self.fn, j): j for j in jobs}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    job = pending.pop(fut)
                    try:
                        yield fut.result()
                    except BrokenProcessPool as exc:
                        yield {"run_id": job["run_id"], "model": job["model"], "status": "failed",
                               "error": f"worker process died: {exc}"}


def _warm_inline() -> None:
    import sklearn.base  # noqa: F401


def make_executor(kind: str, workers: int) -> Executor:
    """The executor named in the settings."""
    if kind == "ray":
        from modelworks.runs.ray_executor import RayExecutor  # type: ignore[import-not-found]

        return RayExecutor(workers)  # type: ignore[no-any-return]
    return LocalExecutor(workers)
