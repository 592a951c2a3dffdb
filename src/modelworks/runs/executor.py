"""Executors feed jobs to workers and hand back results as they finish."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from modelworks.runs.pool import ProcessPool
from modelworks.runs.worker import execute

if TYPE_CHECKING:
    from modelworks.workspace import KFPSettings, Workspace

Job = dict[str, Any]
Result = dict[str, Any]


class Executor(Protocol):
    name: str

    def run(self, jobs: list[Job]) -> Iterator[Result]:
        """Run jobs; yield each result as it finishes (in any order)."""
        ...


class LocalExecutor:
    """A pool of warm worker processes on this machine; a stuck job is killed at the timeout."""

    name = "local"

    def __init__(
        self, workers: int, fn: Callable[[Job], Result] = execute, timeout: float | None = None
    ) -> None:
        self.workers = max(1, workers)
        self.fn = fn
        self.timeout = timeout

    def run(self, jobs: list[Job]) -> Iterator[Result]:
        if not jobs:
            return iter(())
        return ProcessPool(min(self.workers, len(jobs)), self.fn, self.timeout).run(jobs)


class InlineExecutor:
    """Runs each job in this process, one after another: for notebooks, debuggers and tests."""

    name = "inline"

    def __init__(self, fn: Callable[[Job], Result] = execute) -> None:
        self.fn = fn

    def run(self, jobs: list[Job]) -> Iterator[Result]:
        for job in jobs:
            yield self.fn(job)


def for_workspace(ws: Workspace, workers: int | None = None) -> Executor:
    """The executor modelworks.yaml asks for (kind, workers, job timeout, Ray address)."""
    s = ws.settings
    return make_executor(
        s.executor.kind,
        workers or ws.workers,
        timeout=s.executor.timeout,
        address=s.ray.address,
        kfp=s.kfp,
    )


def make_executor(
    kind: str,
    workers: int,
    *,
    timeout: float | None = None,
    address: str | None = None,
    kfp: KFPSettings | None = None,
) -> Executor:
    """The executor named in the settings (`kfp`: the kfp section, for kind kfp)."""
    if kind == "kfp":
        from modelworks.runs.kfp_executor import KFPExecutor
        from modelworks.workspace import KFPSettings

        return KFPExecutor(workers, kfp or KFPSettings(), timeout=timeout)
    if kind == "ray":
        from modelworks.runs.ray_executor import RayExecutor

        return RayExecutor(workers, address=address, timeout=timeout)
    return LocalExecutor(workers, timeout=timeout)
