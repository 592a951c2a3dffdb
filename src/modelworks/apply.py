"""Apply: run the plan — train, gate, package, register — then deploy to auto-deploy envs."""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout
from sqlalchemy import select, update

from modelworks.artifacts.baselayer import effective_setting
from modelworks.artifacts.verify import signed_baseline
from modelworks.errors import ConfigError, LockError
from modelworks.gitops import deploy as gdeploy
from modelworks.gitops.autodeploy import deploy_auto
from modelworks.pipelines.catalog import snapshot
from modelworks.plan import ModelPlan, data_resolver, plan
from modelworks.registry import audit
from modelworks.registry.models import Model, ModelVersion, PipelineVersion, Run
from modelworks.registry.tenants import repository_of
from modelworks.runs import executor as executors
from modelworks.runs import queue
from modelworks.runs.executor import Executor, make_executor
from modelworks.security.redact import sealed_values
from modelworks.tenancy.names import qualified

if TYPE_CHECKING:
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class ApplyResult:
    trained: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    gated: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    deployed: list[dict[str, Any]] = field(default_factory=list)
    pushed: list[dict[str, Any]] = field(default_factory=list)
    commit: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.failed or self.errors or self.rejected)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trained": self.trained,
            "failed": self.failed,
            "gated": self.gated,
            "rejected": self.rejected,
            "skipped": self.skipped,
            "errors": self.errors,
            "deployed": self.deployed,
            "pushed": self.pushed,
            "commit": self.commit,
            "seconds": round(self.seconds, 3),
            "summary": {
                k: len(getattr(self, k))
                for k in ("trained", "failed", "gated", "rejected", "skipped", "errors", "deployed")
            },
        }


def workspace_lock(ws: Workspace, wait: float) -> FileLock:
    """The lock that lets one apply at a time change a workspace."""
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(ws.state_dir / "apply.lock"))
    try:
        lock.acquire(timeout=wait)
    except Timeout:
        raise LockError(
            f"another `mw apply` holds {ws.state_dir / 'apply.lock'}; wait for it to finish "
            "or run with --wait SECONDS"
        ) from None
    return lock


def _insert_new(s: Any, table: Any, values: dict[str, Any]) -> int | None:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id: None when another apply sharing the
    registry (a second controller on PostgreSQL) inserted the same unique key first."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table).values(**values).on_conflict_do_nothing().returning(table.id)
    return s.execute(stmt).scalar()  # type: ignore[no-any-return]


def _record_pipelines(ws: Workspace, store: Store, changes: list[ModelPlan]) -> None:
    """Snapshot each pipeline version used here (another controller may have recorded it,
    but the snapshot must exist on this machine) and record it the first time it is used."""
    seen: set[tuple[str, str]] = set()
    with store.session() as s:
        for mp in changes:
            p = mp.pipeline
            assert p is not None
            if (p.name, p.version) in seen:
                continue
            seen.add((p.name, p.version))
            snap = snapshot(p.source, p.hash, ws.state_dir / "pipelines")
            if not p.recorded:
                _insert_new(
                    s,
                    PipelineVersion,
                    {"name": p.name, "version": p.version, "hash": p.hash, "snapshot": str(snap)},
                )


def _ensure_models(ws: Workspace, store: Store, models: list[ModelPlan]) -> dict[str, int]:
    """The registry ids of these models (the ones to train), adding the new ones."""
    models = [mp for mp in models if mp.loaded is not None and mp.loaded.spec is not None]
    if not models:
        return {}
    with store.session() as s:
        rows = s.execute(
            select(Model.tenant, Model.name, Model.id).where(
                Model.name.in_({mp.spec.name for mp in models})
            )
        ).tuples()
        ids = {qualified(tenant, name): mid for tenant, name, mid in rows}
        for mp in models:
            if mp.loaded is None or mp.loaded.spec is None:
                continue
            spec = mp.spec
            if mp.name not in ids:
                new = _insert_new(
                    s,
                    Model,
                    {
                        "name": spec.name,
                        "tenant": spec.tenant,
                        "spec_path": _rel(ws, mp.loaded.path),
                        "pipeline": spec.pipeline,
                        "labels": spec.labels,
                    },
                )
                if new is None:  # another controller sharing the registry added it first
                    new = s.execute(
                        select(Model.id).where(Model.tenant == spec.tenant, Model.name == spec.name)
                    ).scalar_one()
                ids[mp.name] = new
    return ids


def _baselines(
    ws: Workspace, store: Store, changes: list[ModelPlan]
) -> dict[str, dict[str, float]]:
    """Metrics of the versions deployed in test, for no-regression gates."""
    wanted = {mp.name for mp in changes if mp.spec.gates.no_regression}
    if not wanted:
        return {}
    deployed = gdeploy.read_worktree_configs(ws.deploy_repo, "test", sorted(wanted))
    return {n: signed_baseline(ws, deployed[n]) for n in sorted(wanted) if n in deployed}


def _jobs(
    ws: Workspace, store: Store, claimed: list[queue.Claimed], plans: dict[str, ModelPlan]
) -> list[dict[str, Any]]:
    """The job for each claimed run, with everything a worker needs (paths, not objects)."""
    from modelworks.security.keys import sealing_keys, secrets_dir

    data = data_resolver(ws)
    key = signing_key(ws)
    base_image = effective_setting(ws.settings.oci.base_image)  # `auto` decided (and warned) once
    baselines = _baselines(ws, store, [plans[c.model] for c in claimed])
    work_dir = ws.state_dir / "work"
    work_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    logs: dict[int, str] = {}
    for c in claimed:
        mp = plans[c.model]
        spec, pipe = mp.spec, mp.pipeline
        assert pipe is not None
        assert mp.version is not None
        assert mp.loaded is not None
        ref = data.resolve(spec)
        log_path = ws.state_dir / "logs" / mp.name / f"{c.run_id}.log"
        logs[c.run_id] = str(log_path)
        jobs.append(
            {
                "run_id": c.run_id,
                "attempt": c.attempts,
                "model": mp.name,
                "repository": repository_of(ws, spec.tenant, spec.name),
                "version": mp.version,
                "fingerprint": mp.fingerprint,
                "runtime": spec.runtime,
                "tenant": spec.tenant,
                "weight": c.weight,
                "hyperparameters": spec.hyperparameters,
                "data_source": spec.data_source.model_dump(exclude_none=True),
                "gates": spec.gates.model_dump(),
                "baseline": baselines.get(mp.name),
                "pipeline": {
                    "name": pipe.name,
                    "version": pipe.version,
                    "hash": pipe.hash,
                    "source": str(ws.state_dir / "pipelines" / pipe.hash),
                },
                "data": {
                    "kind": ref.kind,
                    "hash": ref.hash,
                    "dataset": ref.dataset,
                    "files": [str(f) for f in ref.files],
                    "names": _names(ref.kind, ref.dataset, ref.files),
                },
                "oci_dir": str(ws.oci_dir),
                "durable": False,  # images are synced once per batch: _Recorder.flush
                "base_image": base_image,
                "work_dir": str(work_dir),
                "log_path": str(log_path),
                "signing_key": str(key),
                "scan_threshold": ws.settings.scan.severity,
                "scan_limits": ws.settings.scan.limits(),
                # The commit the plan found holding exactly this spec (HEAD may move later).
                "spec_commit": mp.commit,
                "dirty": mp.dirty,
                "spec_path": _rel(ws, mp.loaded.path),
                "secrets_dir": str(secrets_dir(ws)),
                "sealing_key": str(sealing_keys(ws)[0]),
            }
        )
    with store.session() as s:
        for run_id, path in logs.items():
            s.execute(update(Run).where(Run.id == run_id).values(log_path=path))
    return jobs


def signing_key(ws: Workspace) -> Path:
    """The workspace's private signing key; created with its public half on first use."""
    from modelworks.artifacts.sign import generate_keypair

    private = ws.path(ws.settings.signing.private_key)
    public = ws.path(ws.settings.signing.public_key)
    if private.exists():
        return private
    if public.exists():
        raise ConfigError(
            f"signing key {private} is missing but the workspace's public key {public} exists: "
            "copy the private key here (or point signing.private_key at it) so versions are "
            "signed with the key the servers trust"
        )
    generate_keypair(private, public)
    return private


def _rel(ws: Workspace, path: Path) -> str:
    try:
        return path.relative_to(ws.root).as_posix()
    except ValueError:
        return str(path)


def _names(kind: str, dataset: str, files: tuple[Path, ...]) -> list[str]:
    if kind == "dvc":
        return [os.path.basename(dataset)]
    return [f.name if i == 0 else f"{i}-{f.name}" for i, f in enumerate(files)]


class _Recorder:
    """Writes results to the registry in batches, so thousands of tiny runs stay cheap."""

    def __init__(
        self,
        store: Store,
        ids: dict[str, int],
        plans: dict[str, ModelPlan],
        result: ApplyResult,
        actor: str,
        retries: int,
    ) -> None:
        self.store, self.ids, self.plans, self.result, self.actor = store, ids, plans, result, actor
        self.retries = retries
        self.jobs: dict[int, dict[str, Any]] = {}
        self.buffer: list[dict[str, Any]] = []
        self.last = time.monotonic()
        self.secrets: Callable[[], list[bytes]] = list
        self.writer: threading.Thread | None = None
        self.failure: BaseException | None = None

    def redact(self, r: dict[str, Any]) -> dict[str, Any]:
        """The worker already redacted what it unsealed; this catches any other channel."""
        from modelworks.security.redact import redact

        return redact(r, self.secrets()) if r.get("error") else r

    def add(self, r: dict[str, Any]) -> None:
        """Buffer a result and write it in the background as soon as no batch is being
        written (group commit: one batch at a time, in order, at most 200 results waiting), so
        the workers are not kept waiting for the registry and a kill -9 finds few results
        packaged but not yet recorded."""
        self.buffer.append(r)
        busy = self.writer is not None and self.writer.is_alive()
        if not busy or len(self.buffer) >= 200:
            self._join()
            batch, self.buffer = self.buffer, []
            self.last = time.monotonic()
            self.writer = threading.Thread(target=self._write_logged, args=(batch,), daemon=True)
            self.writer.start()

    def flush(self) -> None:
        """Write everything buffered, waiting for a batch still being written."""
        self._join()
        batch, self.buffer = self.buffer, []
        self._write(batch)
        self.last = time.monotonic()

    def wait(self) -> None:
        """Wait for the batch being written, if any."""
        if self.writer is not None:
            self.writer.join()
            self.writer = None

    def _join(self) -> None:
        self.wait()
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure

    def _write_logged(self, batch: list[dict[str, Any]]) -> None:
        try:
            self._write(batch)
        except BaseException as exc:  # raised again in the apply's thread by _join
            self.failure = exc

    def _write(self, batch: list[dict[str, Any]]) -> None:
        if not batch:
            return
        # Workers write images without fsync (job["durable"] is False): one sync of the store
        # makes them durable before the registry rows that name them are committed.
        from modelworks.artifacts.oci import sync_store

        for oci_dir in {self.jobs[r["run_id"]]["oci_dir"] for r in batch if r.get("digest")}:
            sync_store(Path(oci_dir))
        now = datetime.now(UTC)
        self.events: list[dict[str, Any]] = []
        with self.store.session() as s:
            for r in batch:
                self._one(s, r, now)
        audit.record(self.store, self.events)

    def _one(self, s: Any, r: dict[str, Any], now: datetime) -> None:
        status = r["status"]
        run = s.get(Run, r["run_id"])
        run.status, run.error, run.finished_at = status, r.get("error"), now
        run.duration, run.train_seconds, run.worker = (
            r.get("duration"),
            r.get("train_seconds"),
            str(r.get("pid", "")),
        )
        name = r["model"]
        job = self.jobs[run.id]
        if status == "failed" and r.get("retryable") and run.attempts <= self.retries:
            queue.retry_later(run, r.get("error") or "failed")
            return
        if status == "failed":
            self.result.failed.append(
                {"name": name, "version": run.version, "error": r.get("error")}
            )
            self.events.append(
                audit.event(
                    "run.failed",
                    name,
                    actor=self.actor,
                    tenant=job["tenant"],
                    after={"version": run.version, "error": r.get("error")},
                )
            )
            return
        inputs = self.plans[name].inputs
        lineage = {
            "spec_path": job["spec_path"],
            "spec_commit": job["spec_commit"],
            "dirty": bool(job.get("dirty")),
            "uncommitted": list(job.get("dirty") or []),
            "pipeline": job["pipeline"]["name"],
            "pipeline_version": job["pipeline"]["version"],
            "pipeline_hash": job["pipeline"]["hash"],
            "dataset": job["data"]["dataset"],
            "data_hash": job["data"]["hash"],
            "run_id": run.id,
        }
        added = _insert_new(
            s,
            ModelVersion,
            dict(
                model_id=run.model_id,
                version=run.version,
                fingerprint=run.fingerprint,
                status="registered" if status == "succeeded" else status,
                reason=r.get("error"),
                inputs=inputs,
                metrics=r.get("metrics", {}),
                gates=r.get("gates", {}),
                lineage=lineage,
                artifact_digest=r.get("digest"),
                artifact_ref=r.get("ref"),
                oci_layout=r.get("layout"),
                run_id=run.id,
                scan=r.get("scan"),
                signed=bool(r.get("signed")),
            ),
        )
        if added is None:  # another controller sharing the registry registered it first
            run.status, run.error = "cancelled", f"{run.version} was registered by another apply"
            self.result.skipped.append(name)
            return
        entry = {"name": name, "version": run.version, "metrics": r.get("metrics", {})}
        action = "version.registered" if status == "succeeded" else f"version.{status}"
        self.events.append(
            audit.event(
                action,
                name,
                actor=self.actor,
                tenant=job["tenant"],
                after={
                    "version": run.version,
                    "fingerprint": run.fingerprint,
                    "digest": r.get("digest"),
                    "metrics": r.get("metrics", {}),
                    "reason": r.get("error"),
                },
            )
        )
        if job.get("dirty"):
            entry["dirty"] = True
        if status == "succeeded":
            self.result.trained.append({**entry, "digest": r.get("digest")})
        elif status == "rejected":
            self.result.rejected.append({**entry, "reason": r.get("error"), "scan": r.get("scan")})
        else:
            self.result.gated.append({**entry, "reasons": r.get("gates", {}).get("failures", [])})


def _drain(
    ws: Workspace,
    store: Store,
    plans: dict[str, ModelPlan],
    recorder: _Recorder,
    executor: Executor,
    on_start: Callable[[int], None] | None,
    on_result: ProgressFn | None,
) -> None:
    """Run queued jobs of these models until none is left (retries come back after a backoff)."""
    wanted = {name: mp.fingerprint for name, mp in plans.items() if mp.fingerprint}
    policy, budget = queue.scheduler(ws, store)
    while True:
        claimed = queue.claim(store, wanted, policy, budget)
        if not claimed:
            due = queue.next_due(store, wanted)
            if due is None:
                return
            time.sleep(min(due, 5.0) + (0.01 if due else 0.25))  # 0: held by run limits
            continue
        jobs = _jobs(ws, store, claimed, plans)
        recorder.jobs.update((j["run_id"], j) for j in jobs)
        if on_start:
            on_start(len(jobs))
        try:
            for r in executor.run(jobs):
                r = recorder.redact(r)
                recorder.add(r)
                if on_result:
                    on_result(r)
        finally:
            recorder.wait()  # no batch is written after the apply lets go of the workspace
        recorder.flush()


def _push(ws: Workspace, store: Store, result: ApplyResult, actor: str) -> None:
    """Push new versions to the configured OCI registry; a failed push is an error, not a deploy."""
    from modelworks.artifacts.publish import push_versions

    result.pushed = push_versions(ws, store, [t["name"] for t in result.trained], actor=actor)
    for p in result.pushed:
        if p["status"] == "failed":
            result.errors.append({"name": p["name"], "error": f"push failed: {p.get('error')}"})


def apply(
    ws: Workspace,
    store: Store,
    *,
    names: list[str] | None = None,
    executor: Executor | None = None,
    actor: str = "modelworks",
    trigger: str = "auto",
    wait: float = 0,
    allow_dirty: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_result: ProgressFn | None = None,
) -> ApplyResult:
    """Train what the plan says changed, register it, and deploy to auto-deploy envs.

    Only committed inputs are trained unless `allow_dirty`; a dirty version is never deployed.
    """
    started = time.perf_counter()
    lock = workspace_lock(ws, wait)
    ex = executor or make_executor(
        ws.settings.executor.kind,
        ws.workers,
        timeout=ws.settings.executor.timeout,
        address=ws.settings.ray.address,
        kfp=ws.settings.kfp,
    )
    warming = False
    try:
        # A local pool's warm process imports what training needs while this one plans.
        warming = executors.start(ex)
        queue.requeue_interrupted(store)
        p = plan(ws, store, names, allow_dirty=allow_dirty)
        result = ApplyResult()
        result.skipped = [m.name for m in p.models if m.action == "unchanged"]
        result.errors = [
            {"name": m.name, "error": "; ".join(m.reasons)} for m in p.models if m.action == "error"
        ]
        valid = [m for m in p.models if m.action != "error"]
        ids = _ensure_models(ws, store, p.changes)  # only runs of changes are queued below
        if p.changes:
            _record_pipelines(ws, store, p.changes)
            queue.enqueue(store, p.changes, ids, trigger)
        recorder = _Recorder(
            store, ids, {m.name: m for m in valid}, result, actor, ws.settings.executor.retries
        )
        recorder.secrets = functools.cache(lambda: sealed_values(ws))
        _drain(ws, store, {m.name: m for m in valid}, recorder, ex, on_start, on_result)
        if warming:
            warming = False
            executors.stop(ex)  # its memory and CPU back before the deploy step
        if ws.settings.oci.registry and result.trained:
            _push(ws, store, result, actor)
        result.deployed, result.commit = deploy_auto(ws, store, p, actor)
        result.seconds = time.perf_counter() - started
        return result
    finally:
        if warming:
            executors.stop(ex)
        lock.release()
