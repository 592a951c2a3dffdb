"""Executors feed jobs to workers and hand back results as they finish."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from modelworks.runs.pool import ProcessPool, context, warm
from modelworks.runs.warm import WarmProcess
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
        self.warm: WarmProcess | None = None

    def start(self) -> bool:
        """Start warming up now (in a process the workers are forked from), while the caller
        plans; False when already started or where fork is unavailable."""
        ctx = context()
        if self.warm is not None or ctx.get_start_method() != "fork":
            return False
        self.warm = WarmProcess(ctx, self.fn, warm)
        return True

    def close(self) -> None:
        """Stop the warm process, if one was started."""
        if self.warm is not None:
            self.warm.close()
            self.warm = None

    def run(self, jobs: list[Job]) -> Iterator[Result]:
        if not jobs:
            return iter(())
        pool = ProcessPool(min(self.workers, len(jobs)), self.fn, self.timeout, self.warm)
        return pool.run(jobs)


class InlineExecutor:
    """Runs each job in this process, one after another: for notebooks, debuggers and tests."""

    name = "inline"

    def __init__(self, fn: Callable[[Job], Result] = execute) -> None:
        self.fn = fn

    def run(self, jobs: list[Job]) -> Iterator[Result]:
        for job in jobs:
            yield self.fn(job)


def start(ex: Executor) -> bool:
    """Let an executor warm up while the caller plans (a local pool forks its warm process
    now); True when this call started it, so the caller stops it with `stop`."""
    begin = getattr(ex, "start", None)
    return bool(begin()) if callable(begin) else False


def stop(ex: Executor) -> None:
    """Stop what `start` started."""
    end = getattr(ex, "close", None)
    if callable(end):
        end()


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
