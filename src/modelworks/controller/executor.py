"""An executor that stops gracefully: running jobs finish, unstarted ones go back to the queue.

The stop flag lives in shared memory created before the worker pool forks, so a worker that
is handed a job after the stop was asked returns it untouched instead of training it.
"""

from __future__ import annotations

import functools
import multiprocessing
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import update

from modelworks.registry.models import Run
from modelworks.runs.executor import Executor, LocalExecutor
from modelworks.runs.worker import execute

if TYPE_CHECKING:
    from modelworks.registry.store import Store

STOPPED = "stopped"
SOFT = "requeued: the controller stopped before this run started"
HARD = "interrupted: the controller was stopped hard while this run trained"


class StoppingError(Exception):
    """Raised out of apply when the controller is stopping; unstarted runs are queued again."""


def _guarded(flag: Any, job: dict[str, Any]) -> dict[str, Any]:
    if flag.value:
        return {"run_id": job["run_id"], "model": job["model"], "status": STOPPED}
    # Ctrl-C reaches the whole foreground process group; the controller decides, not the worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return execute(job)


class GracefulExecutor:
    """Wraps the local pool (or any executor) with a stop flag and un-claims what it did not run."""

    def __init__(
        self,
        store: Store,
        workers: int,
        *,
        timeout: float | None = None,
        inner: Executor | None = None,
    ) -> None:
        self.store = store
        self.flag = multiprocessing.RawValue("b", 0)
        self.inner = inner or LocalExecutor(
            workers, fn=functools.partial(_guarded, self.flag), timeout=timeout
        )
        self.name = getattr(self.inner, "name", "local")
        self.unfinished: set[int] = set()
        self.interrupted: set[int] = set()

    @property
    def stopping(self) -> bool:
        return bool(self.flag.value)

    def stop(self) -> None:
        """Ask for a stop: no new job starts (safe to call from a signal handler)."""
        self.flag.value = 1

    def run(self, jobs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Run jobs through the inner executor unless stopping; hand back finished results."""
        if self.stopping:
            self.requeue([j["run_id"] for j in jobs])
            raise StoppingError("the controller is stopping")
        self.unfinished.update(j["run_id"] for j in jobs)
        for r in self.inner.run(jobs):
            self.unfinished.discard(r["run_id"])
            if r.get("status") == STOPPED:
                self.requeue([r["run_id"]])
                continue
            if self.stopping and r.get("status") == "failed" and r.get("retryable"):
                self.requeue([r["run_id"]], started=True)  # a hard stop killed its worker
                continue
            yield r

    def requeue(self, run_ids: list[int] | set[int], *, started: bool = False) -> int:
        """Put claimed runs back in the queue: unstarted ones without counting the attempt,
        ones a hard stop killed with it (a run killed and then claimed once more while
        stopping keeps the 'interrupted' reason)."""
        ids = set(run_ids)
        if not ids:
            return 0
        if started:
            self.interrupted.update(ids)
        hard = ids & self.interrupted
        count = 0
        with self.store.session() as s:
            for group, error in ((hard, HARD), (ids - hard, SOFT)):
                if not group:
                    continue
                values: dict[str, Any] = {"status": "queued", "started_at": None, "error": error}
                if not started:
                    values["attempts"] = Run.attempts - 1
                res = s.execute(
                    update(Run)
                    .where(Run.id.in_(list(group)), Run.status == "running")
                    .values(**values)
                )
                count += int(res.rowcount or 0)  # type: ignore[attr-defined]
        self.unfinished.difference_update(ids)
        return count
