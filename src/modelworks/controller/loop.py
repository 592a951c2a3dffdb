"""The controller: one reconcile pass per tick, like Argo CD's application controller for models.

Each tick, in order:

1. version new files in the `data.watch` folders (one commit, specs bumped);
2. compare each watched repository's commit with the last reconciled one (state file);
   a change to spec files applies those models, a change to pipelines, data or
   modelworks.yaml (or the first tick after a start) applies the whole workspace;
   models with runs queued but not run (`POST /api/v1/apply`) are applied too;
3. retrain models whose cron `schedule` is due, then those drift asked to retrain, each on
   the newest data version (a commit when the spec moves), with trigger schedule / drift;
4. run the monitoring pass when `monitor_interval` has passed;
5. tell the inference servers to reconcile when the deploy repository moved.

apply() holds the workspace lock; the controller waits at most `lock_wait` seconds for it
and otherwise tries again on the next tick, so it never deadlocks with a user's `mw apply`.
A repository's commit is recorded as reconciled only after its apply finished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from modelworks import _deployrepo, _git
from modelworks.apply import ApplyResult, apply, workspace_lock
from modelworks.controller import repos, triggers
from modelworks.controller.executor import GracefulExecutor, StoppingError
from modelworks.controller.state import ControllerState
from modelworks.errors import ConflictError, LockError, ModelworksError, NotFoundError
from modelworks.spec import SPEC_SUFFIXES, load_spec
from modelworks.workspace import Workspace

if TYPE_CHECKING:
    from modelworks.registry.store import Store

log = logging.getLogger("modelworks.controller")


@dataclass
class TickReport:
    """What one pass of the controller saw and did."""

    started: str
    changes: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] | None = None
    applied: list[dict[str, Any]] = field(default_factory=list)
    scheduled: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    noops: list[dict[str, Any]] = field(default_factory=list)
    monitored: dict[str, dict[str, int]] = field(default_factory=dict)
    reconciled: bool = False
    gc: dict[str, int] | None = None
    stopped: bool = False
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


class Controller:
    """Watches one workspace and keeps the line reconciled with Git."""

    def __init__(
        self,
        ws: Workspace,
        store: Store,
        *,
        executor: Any = None,
        workers: int | None = None,
        actor: str = "controller",
        lock_wait: float = 5.0,
        monitor_interval: float | None = None,
        on_deploy: list[Callable[[], None]] | None = None,
    ) -> None:
        triggers.check_watch(ws)
        self.ws, self.store, self.actor, self.lock_wait = ws, store, actor, lock_wait
        self.state_path = ws.state_dir / "controller" / "state.json"
        self.state = ControllerState.load(self.state_path)
        self.executor = executor if executor is not None else _executor(ws, store, workers)
        self.monitor_interval = monitor_interval
        self.on_deploy = list(on_deploy or [])
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.started = False
        self.last: TickReport | None = None
        self.ticks = 0
        self._schedules: dict[str, str] | None = None
        self._urls: list[repos.WatchedRepo] | None = None
        self._last_monitor: float | None = None
        self._last_gc: float | None = None
        self._monitor_thread: threading.Thread | None = None
        self.background = False

    # -- control -------------------------------------------------------------------------------

    def poke(self) -> None:
        """Run the next tick now (a webhook arrived)."""
        self.wake.set()

    def stop(self) -> None:
        """Stop after the running jobs finish; jobs not started go back to the queue."""
        self.stopping.set()
        stop = getattr(self.executor, "stop", None)
        if stop is not None:
            stop()
        self.wake.set()

    def hard_stop(self) -> None:
        """Stop now: kill the training workers; their runs go back to the queue."""
        import multiprocessing

        self.stop()
        for child in multiprocessing.active_children():
            child.kill()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the workspace's controller lock: one controller per workspace at a time."""
        folder = self.ws.state_dir / "controller"
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(folder / "controller.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise ConflictError(
                f"another `mw controller` (or `mw up`) is running on {self.ws.root} "
                f"(it holds {lock.lock_file})"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def run(self, interval: float | None = None) -> None:
        """Tick until stop()."""
        every = interval or self.ws.settings.controller.poll_interval
        with self.exclusive():
            self.background = True
            try:
                while not self.stopping.is_set():
                    self.wake.clear()
                    self.tick()
                    self.wake.wait(every)
            finally:
                self.background = False
                self._abandon()

    def _abandon(self) -> None:
        unfinished = getattr(self.executor, "unfinished", None)
        if unfinished:
            self.executor.requeue(set(unfinished), started=True)

    # -- one pass ------------------------------------------------------------------------------

    def tick(self) -> TickReport:
        """One reconcile pass; errors are reported, never raised (the loop must go on)."""
        t0 = time.perf_counter()
        r = TickReport(started=_now().isoformat())
        try:
            _deployrepo.pull(self.ws)  # a deploy repo named by URL: see what others merged
            self._watch_data(r)
            changes = self._detect(r)
            deploy_moved = self._apply_changes(changes, r)
            self._queued(r)
            self._schedules_due(r)
            self._monitor(r)
            self._drift(r)
            self._gc(r)
            if deploy_moved or any(a.get("deployed") for a in r.applied):
                self._reconcile_serving(r)
        except StoppingError:
            r.stopped = True
        except LockError as exc:
            r.errors.append(f"{exc} (the controller tries again on its next tick)")
        except ModelworksError as exc:
            r.errors.append(str(exc))
        except Exception as exc:  # the loop outlives any one bad pass
            log.exception("controller tick failed")
            r.errors.append(f"unexpected error: {type(exc).__name__}: {exc}")
        finally:
            self.state.last_tick = r.started
            self.state.save(self.state_path)
            r.seconds = round(time.perf_counter() - t0, 3)
            self.last, self.ticks = r, self.ticks + 1
        for e in r.errors:
            log.error("%s", e)
        return r

    def _watch_data(self, r: TickReport) -> None:
        if not self.ws.settings.data.watch:
            return
        files = triggers.scan_watched(self.ws, self.state)
        if files:
            lock = workspace_lock(self.ws, self.lock_wait)
            try:
                r.data = triggers.version_files(self.ws, self.state, files, self.actor)
            finally:
                lock.release()
            r.errors += r.data["errors"]
            log.info("versioned %d new data file(s) from watched folders", len(files))

    def _detect(self, r: TickReport) -> list[repos.Change]:
        if self._urls is None:
            self._urls = repos.data_repo_urls(self.ws)
        changes = []
        for repo in repos.workspace_repos(self.ws) + self._urls:
            head = repo.head()
            if head is None or head == self.state.repos.get(repo.key):
                continue
            change = repos.classify(repo, self.state.repos.get(repo.key), head)
            changes.append(change)
            r.changes.append(
                {"repo": repo.key, "old": change.old, "new": head, "parts": sorted(change.parts)}
            )
        return changes

    def _apply_changes(self, changes: list[repos.Change], r: TickReport) -> bool:
        """Apply what the changes touch and mark their commits reconciled; True if deploy moved."""
        parts = set().union(*(c.parts for c in changes)) if changes else set()
        if "config" in parts or "unknown" in parts:
            self.ws = Workspace.load(self.ws.root)
        if parts & {"models", "config", "unknown"}:
            self._schedules, self._urls = None, None
        full = not self.started or any(c.full for c in changes)
        names = None if full else self._names([f for c in changes for f in c.spec_files])
        result = self._apply(names, "auto", r) if full or names else None
        self.started = True
        for c in changes:
            self.state.repos[c.repo] = c.new
        if result is not None and result.commit:
            self._own_commit(self.ws.deploy_repo, result.commit)
        return "deploy" in parts

    def _queued(self, r: TickReport) -> None:
        """Run what was queued without being run (`POST /api/v1/apply`, see modelworks.submit)."""
        from modelworks.submit import cancel_queued, queued_models

        names = queued_models(self.store)
        if not names:
            return
        try:
            result = self._apply(names, "auto", r)
        except NotFoundError:  # a queued model's spec was removed: plan refuses the names
            names = self._drop_removed(names, r)
            if not names:
                return
            result = self._apply(names, "auto", r)
        if result.commit:
            self._own_commit(self.ws.deploy_repo, result.commit)
        # A model whose spec no longer plans would keep its queued runs, and each tick would
        # retry it; it runs again once a fixed spec is committed (a new fingerprint).
        for e in result.errors:
            if e["name"] in names:
                cancel_queued(self.store, [e["name"]], f"the spec no longer plans: {e['error']}")

    def _drop_removed(self, names: list[str], r: TickReport) -> list[str]:
        """The queued models that still have a spec; the others' queued runs are cancelled."""
        from modelworks.plan import plan
        from modelworks.submit import cancel_queued

        known = {m.name for m in plan(self.ws, self.store, None).models}
        gone = [n for n in names if n not in known]
        if cancel_queued(self.store, gone, "the model's spec was removed"):
            r.errors.append(f"cancelled the queued runs of {', '.join(gone)}: no spec any more")
        return [n for n in names if n in known]

    def _names(self, files: list[Path]) -> list[str]:
        names = set()
        for f in files:
            if f.suffix in SPEC_SUFFIXES and f.exists():
                names.add(load_spec(f).name)
        return sorted(names)

    def _apply(self, names: list[str] | None, trigger: str, r: TickReport) -> ApplyResult:
        result = apply(
            self.ws,
            self.store,
            names=names,
            executor=self.executor,
            actor=self.actor,
            trigger=trigger,
            wait=self.lock_wait,
        )
        summary = result.to_dict()["summary"]
        r.applied.append(
            {
                "trigger": trigger,
                "names": names,
                **summary,
                "commit": result.commit,
                "seconds": round(result.seconds, 3),
            }
        )
        if any(
            summary[k] for k in ("trained", "gated", "failed", "rejected", "errors", "deployed")
        ):
            log.info(
                "apply (%s): %s", trigger, ", ".join(f"{v} {k}" for k, v in summary.items() if v)
            )
        return result

    def _schedules_due(self, r: TickReport) -> None:
        if self._schedules is None:
            self._schedules = triggers.schedules(self.ws)
        now = _now()
        due = triggers.due_schedules(self._schedules, self.state, now)
        if due:
            self._retrain(due, "schedule", r)
            r.scheduled = due
            for name in due:
                self.state.schedules[name] = now.isoformat()

    def _monitor(self, r: TickReport) -> None:
        """Run the monitoring pass when due: in a thread of its own under run() (a pass over
        a big fleet takes a while and must not hold up commits), inline for a single tick."""
        if not self.monitor_interval:
            return
        now = time.monotonic()
        if self._last_monitor is not None and now - self._last_monitor < self.monitor_interval:
            return
        if self._monitor_thread is not None and self._monitor_thread.is_alive():
            return
        self._last_monitor = now
        if not self.background:
            r.monitored = self._monitor_pass()
            return
        self._monitor_thread = threading.Thread(
            target=self._monitor_safely, name="mw-monitor", daemon=True
        )
        self._monitor_thread.start()

    def _monitor_pass(self) -> dict[str, dict[str, int]]:
        from modelworks.monitor.run import monitor

        out = {}
        for env in self.ws.settings.environments:
            found = monitor(self.ws, self.store, env, actor=self.actor)
            if found:
                out[env] = {"models": len(found), "drifted": sum(d.drifted for d in found)}
            if any(d.retrain_requested for d in found):
                self.poke()  # the next tick retrains now, not at the next poll
        return out

    def _monitor_safely(self) -> None:
        try:
            done = self._monitor_pass()
            log.info("monitoring pass: %s", done or "nothing served")
        except Exception:  # the next pass tries again
            log.exception("monitoring pass failed")

    def _gc(self, r: TickReport) -> None:
        """`mw gc` every `gc.interval` seconds (off by default), skipped while an apply runs."""
        from modelworks.artifacts.gc import collect

        every = self.ws.settings.gc.interval
        now = time.monotonic()
        if not every or (self._last_gc is not None and now - self._last_gc < every):
            return
        self._last_gc = now
        try:
            lock = workspace_lock(self.ws, 0)
        except LockError:
            return  # an apply holds the workspace: the next pass collects
        try:
            report = collect(self.ws, self.store)
        finally:
            lock.release()
        r.gc = {"removed": len(report.items), "bytes": report.bytes}
        if report.items:
            log.info("gc: removed %d item(s), %d bytes", len(report.items), report.bytes)

    def _drift(self, r: TickReport) -> None:
        from modelworks.monitor.run import retrain_requests

        asked, top = retrain_requests(self.store, self.state.drift_seen)
        names = sorted({a["model"] for a in asked})
        if names:
            log.info("drift asks to retrain %s", ", ".join(names))
            self._retrain(names, "drift", r)
            r.drift = names
        self.state.drift_seen = top

    def _retrain(self, names: list[str], trigger: str, r: TickReport) -> None:
        """Move the specs to their newest data (one commit), apply them, record no-ops."""
        from modelworks.plan import plan

        lock = workspace_lock(self.ws, self.lock_wait)
        try:
            bump = triggers.bump_to_newest(self.ws, names, trigger, self.actor)
        finally:
            lock.release()
        if bump.commit:
            self._own_commit(self.ws.models_dir, bump.commit)
        result = self._apply(names, trigger, r)
        if result.commit:
            self._own_commit(self.ws.deploy_repo, result.commit)
        skipped = [n for n in names if n in set(result.skipped)]
        if skipped:
            p = plan(self.ws, self.store, skipped)
            r.noops += triggers.record_noops(self.ws, self.store, p, skipped, trigger, self.actor)

    def _own_commit(self, where: Path, commit: str) -> None:
        """The line's own commit (a spec bump, a deploy) right on top of a reconciled head needs
        no reconcile of its own: the apply around it did that work."""
        top = repos.toplevel(where) or self.ws.root.resolve()
        key = "workspace" if top == self.ws.root.resolve() else f"repo:{top}"
        parent = _git.head(top, f"{commit}^")
        if parent is not None and self.state.repos.get(key) == parent:
            self.state.repos[key] = commit

    def _reconcile_serving(self, r: TickReport) -> None:
        for fn in self.on_deploy:
            try:
                fn()
            except Exception as exc:  # a server that is down must not stop the controller
                r.errors.append(f"serving reconcile failed: {type(exc).__name__}: {exc}")
        r.reconciled = bool(self.on_deploy)

    def status(self) -> dict[str, Any]:
        """The controller's own state for /api/status."""
        return {
            "workspace": str(self.ws.root),
            "pid": os.getpid(),
            "ticks": self.ticks,
            "stopping": self.stopping.is_set(),
            "state": self.state.to_dict(),
            "last_tick": self.last.to_dict() if self.last else None,
        }


def _executor(ws: Workspace, store: Store, workers: int | None) -> GracefulExecutor:
    timeout = ws.settings.executor.timeout
    if ws.settings.executor.kind in ("ray", "kfp"):
        from modelworks.runs.executor import make_executor

        inner = make_executor(
            ws.settings.executor.kind,
            workers or ws.workers,
            timeout=timeout,
            address=ws.settings.ray.address,
            kfp=ws.settings.kfp,
        )
        return GracefulExecutor(store, workers or ws.workers, inner=inner)
    return GracefulExecutor(store, workers or ws.workers, timeout=timeout)


def _now() -> datetime:
    return datetime.now(UTC)
