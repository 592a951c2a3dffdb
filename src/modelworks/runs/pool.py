"""A pool of warm worker processes that can kill a stuck job and replace a dead worker."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from modelworks.runs.fairshare import Dispatcher
from modelworks.runs.warm import WarmProcess

Job = dict[str, Any]
Result = dict[str, Any]


def preload() -> None:
    """Import what every training job needs, once; forked workers inherit it warm."""
    import model_signing.signing  # noqa: F401
    import sklearn.base  # noqa: F401
    import skops.io  # noqa: F401

    import modelworks.artifacts.oci
    import modelworks.artifacts.scan
    import modelworks.artifacts.sign  # noqa: F401
    from modelworks.runs.worker import sbom_bytes

    sbom_bytes()  # the environment scan behind each version's SBOM, done once before forking


def warm() -> None:
    """In each worker: one BLAS thread (the pool is the parallelism), heavy imports done once."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    preload()


def _serve(conn: Connection, fn: Callable[[Job], Result]) -> None:
    warm()
    while True:
        try:
            job = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if job is None:
            return
        conn.send(fn(job))


@dataclass
class _Worker:
    proc: Any
    conn: Connection
    job: Job | None = None
    started: float = 0.0


def context() -> Any:
    # fork keeps the parent's imports warm; where fork is unavailable fall back to spawn.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def failure(job: Job, message: str) -> Result:
    """A failed result the line may retry (the job or its worker was lost, or timed out)."""
    return {
        "run_id": job["run_id"],
        "model": job["model"],
        "status": "failed",
        "error": message,
        "retryable": True,
    }


class ProcessPool:
    """Runs jobs on N worker processes; yields results as they finish."""

    def __init__(
        self,
        workers: int,
        fn: Callable[[Job], Result],
        timeout: float | None = None,
        warm: WarmProcess | None = None,
    ) -> None:
        self.size = max(1, workers)
        self.fn = fn
        self.timeout = timeout
        self.ctx = context()
        self.warm = warm  # forks the workers, already warm (see runs/warm.py)

    def _spawn(self) -> _Worker:
        if self.warm is not None:
            try:
                proc, conn = self.warm.spawn()
                return _Worker(proc, conn)
            except (EOFError, OSError):  # the warm process is gone: fork from here instead
                self.warm = None
                if self.ctx.get_start_method() == "fork":
                    preload()
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_serve, args=(child, self.fn), daemon=True)
        proc.start()
        child.close()
        return _Worker(proc, parent)

    def _assign(self, w: _Worker, pending: Dispatcher, workers: list[_Worker]) -> None:
        """Give a free worker the next job by fair share of the tenants, if any is left."""
        job = pending.take([x.job for x in workers if x.job is not None])
        if job is not None:
            w.job, w.started = job, time.monotonic()
            w.conn.send(job)

    def run(self, jobs: list[Job]) -> Iterator[Result]:
        if self.warm is None and self.ctx.get_start_method() == "fork":
            preload()
        pending = Dispatcher(jobs)
        workers = [self._spawn() for _ in range(min(self.size, len(jobs)))]
        try:
            for w in workers:
                self._assign(w, pending, workers)
            while any(w.job is not None for w in workers):
                yield from self._step(workers, pending)
        finally:
            self._shutdown(workers)

    def _step(self, workers: list[_Worker], pending: Dispatcher) -> Iterator[Result]:
        busy = {w.conn: w for w in workers if w.job is not None}
        wait_for = None
        if self.timeout:
            oldest = min(w.started for w in busy.values())
            wait_for = max(0.0, oldest + self.timeout - time.monotonic())
        for conn in wait(list(busy), timeout=wait_for):
            w = busy[conn]  # type: ignore[index]
            job = w.job
            assert job is not None
            try:
                result = w.conn.recv()
            except (EOFError, OSError):
                w.proc.join(1)
                result = failure(job, f"worker process died (exit code {w.proc.exitcode})")
                self._replace(workers, w)
                w = workers[-1]
            w.job = None
            # The next job goes out only once the caller has taken this result, so a kill
            # leaves at most one packaged-but-unrecorded run per worker.
            yield result
            self._assign(w, pending, workers)
        if self.timeout:
            now = time.monotonic()
            for w in [w for w in workers if w.job is not None and now - w.started > self.timeout]:
                job = w.job
                assert job is not None
                w.proc.kill()
                w.proc.join(5)
                self._replace(workers, w)
                yield failure(job, f"timed out after {self.timeout:g}s; the worker was killed")
                self._assign(workers[-1], pending, workers)

    def _replace(self, workers: list[_Worker], dead: _Worker) -> None:
        dead.conn.close()
        workers.remove(dead)
        workers.append(self._spawn())

    def _shutdown(self, workers: list[_Worker]) -> None:
        for w in workers:
            try:
                if w.job is None:
                    w.conn.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + 5
        for w in workers:
            if w.job is not None:
                w.proc.kill()
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
            w.conn.close()
