"""Read-side queries behind `mw status`, `mw show`, `mw runs` and `mw logs`.

Each takes `tenants`: the caller's visible tenants (`tenancy.access.visible_tenants`), None
for all. Another tenant's model or run is then *not found*, with the very message of a
missing one, so the answer never confirms that it exists.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from modelworks.errors import NotFoundError, did_you_mean
from modelworks.registry.fastread import layout_repo, scan_status
from modelworks.registry.models import Deployment, Model, ModelVersion, Run
from modelworks.registry.store import Store
from modelworks.tenancy.access import DEFAULT_TENANT
from modelworks.tenancy.names import model_key, qualified, resolve_ref, split_ref


def _iso(dt: Any) -> str | None:
    return dt.isoformat() if dt is not None else None


def version_dict(v: ModelVersion) -> dict[str, Any]:
    return {
        "version": v.version,
        "fingerprint": v.fingerprint,
        "status": v.status,
        "reason": v.reason,
        "metrics": v.metrics,
        "gates": v.gates,
        "lineage": v.lineage,
        "scan": v.scan,
        "signed": v.signed,
        "created_at": _iso(v.created_at),
        "artifact": {
            "oci_layout": v.oci_layout,
            "ref": v.artifact_ref,
            "digest": v.artifact_digest,
            "pushed_uri": v.pushed_uri,
        },
    }


def run_dict(r: Run, model: str) -> dict[str, Any]:
    return {
        "id": r.id,
        "model": model,
        "version": r.version,
        "status": r.status,
        "trigger": r.trigger,
        "attempts": r.attempts,
        "error": r.error,
        "reason": r.reason,
        "duration": r.duration,
        "train_seconds": r.train_seconds,
        "log_path": r.log_path,
        "created_at": _iso(r.created_at),
        "started_at": _iso(r.started_at),
        "finished_at": _iso(r.finished_at),
    }


def only(q: Any, tenants: frozenset[str] | None) -> Any:
    """`q` (a select over Model) limited to the `tenants` (None: all)."""
    return q if tenants is None else q.where(Model.tenant.in_(sorted(tenants)))


def get_model(
    s: Any, ref: str, tenants: frozenset[str] | None = None, *, tenant: str | None = None
) -> Model:
    """The model `ref` names among the `tenants`' models (None: all): `tenant/name`, or a bare
    name (see tenancy.names.resolve_ref); with `tenant`, `ref` is a name in that tenant.
    Another tenant's model is not found, as a missing one."""
    if tenant is not None:
        ref = f"{tenant}/{split_ref(ref)[1]}"
    _tenant, name = split_ref(ref)
    found = s.scalars(only(select(Model).where(Model.name == name), tenants))
    rows = {(m.tenant or DEFAULT_TENANT, m.name): m for m in found}
    if not rows:
        names = s.execute(only(select(Model.tenant, Model.name), tenants)).tuples().all()
        shown = [qualified(t, n) for t, n in names]
        raise NotFoundError(f"no model named {ref!r} in the registry.{did_you_mean(ref, shown)}")
    model: Model = rows[model_key(resolve_ref(ref, rows))]
    return model


def resolve_model(store: Store, ref: str, tenants: frozenset[str] | None = None) -> str:
    """The qualified name (`acme/churn`, bare for the default tenant) of the registered
    model `ref` names (`tenant/name` or a bare name); NotFoundError / ConflictError else."""
    with store.session() as s:
        m = get_model(s, ref, tenants)
        return qualified(m.tenant, m.name)


def status(store: Store, tenants: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """One row per model of the `tenants` (None: all): latest version, its status and
    metrics, and what each env serves."""
    with store.session() as s:
        return status_rows(s, list(s.scalars(only(select(Model), tenants).order_by(Model.name))))


def status_rows(s: Any, models: list[Model]) -> list[dict[str, Any]]:
    """The `mw status` row of each of `models` (in their order), read in a few queries."""
    ids = [m.id for m in models]
    latest = (
        select(func.max(ModelVersion.id))
        .where(ModelVersion.model_id.in_(ids))
        .group_by(ModelVersion.model_id)
    )
    versions = {
        v.model_id: v for v in s.scalars(select(ModelVersion).where(ModelVersion.id.in_(latest)))
    }
    last_dep = (
        select(func.max(Deployment.id))
        .where(Deployment.model_id.in_(ids))
        .group_by(Deployment.model_id, Deployment.env)
    )
    deployed: dict[int, dict[str, str]] = {}
    for d in s.scalars(select(Deployment).where(Deployment.id.in_(last_dep))):
        deployed.setdefault(d.model_id, {})[d.env] = d.version
    last_run = select(func.max(Run.id)).where(Run.model_id.in_(ids)).group_by(Run.model_id)
    runs = {r.model_id: r for r in s.scalars(select(Run).where(Run.id.in_(last_run)))}
    rows = []
    for m in models:
        v, r = versions.get(m.id), runs.get(m.id)
        rows.append(
            {
                "name": qualified(m.tenant, m.name),
                "tenant": m.tenant,
                "pipeline": m.pipeline,
                "version": v.version if v else None,
                "status": v.status if v else None,
                "metrics": v.metrics if v else {},
                "deployed": deployed.get(m.id, {}),
                "last_run": {"id": r.id, "status": r.status, "error": r.error} if r else None,
            }
        )
    return rows


def model_versions(s: Any, model_id: int) -> list[ModelVersion]:
    """A model's versions, newest first."""
    q = (
        select(ModelVersion)
        .where(ModelVersion.model_id == model_id)
        .order_by(ModelVersion.id.desc())
    )
    return list(s.scalars(q).all())


def show(
    store: Store, name: str, tenants: frozenset[str] | None = None, *, tenant: str | None = None
) -> dict[str, Any]:
    """Everything the registry knows about one model (of the `tenants`; None: any)."""
    with store.session() as s:
        m = get_model(s, name, tenants, tenant=tenant)
        versions = model_versions(s, m.id)
        deps = s.scalars(
            select(Deployment).where(Deployment.model_id == m.id).order_by(Deployment.id.desc())
        ).all()
        current: dict[str, dict[str, Any]] = {}
        for d in deps:
            current.setdefault(
                d.env,
                {
                    "version": d.version,
                    "commit": d.commit,
                    "kind": d.kind,
                    "actor": d.actor,
                    "at": _iso(d.created_at),
                },
            )
        latest_ok = next((v for v in versions if v.status == "registered"), None)
        artifact = None
        if latest_ok is not None:
            artifact = {
                "oci_layout": latest_ok.oci_layout,
                "ref": latest_ok.artifact_ref,
                "digest": latest_ok.artifact_digest,
                "version": latest_ok.version,
                "skopeo": f"oci:{latest_ok.oci_layout}:{latest_ok.artifact_ref}",
                "pushed_uri": latest_ok.pushed_uri,
                "signed": latest_ok.signed,
                "scan": scan_status(latest_ok.scan),
            }
        return {
            "name": qualified(m.tenant, m.name),
            "tenant": m.tenant,
            "pipeline": m.pipeline,
            "spec_path": m.spec_path,
            "labels": m.labels,
            "artifact": artifact,
            "sbom": _sbom(latest_ok),
            "latest": version_dict(versions[0]) if versions else None,
            "versions": [version_dict(v) for v in versions],
            "deployments": current,
        }


def _sbom(v: ModelVersion | None) -> dict[str, Any] | None:
    """Summary of the artifact's sbom.json (format, spec, components, key packages)."""
    if v is None or not v.artifact_digest or not v.oci_layout:
        return None
    from modelworks.artifacts.sbom import artifact_sbom

    repo = layout_repo(v.oci_layout)
    return {"version": v.version, **artifact_sbom(v.oci_layout, repo, v.artifact_digest)}


def runs(
    store: Store,
    *,
    model: str | None = None,
    status: str | None = None,
    limit: int = 50,
    tenant: str | None = None,
    tenants: frozenset[str] | None = None,
    before: int | None = None,
) -> list[dict[str, Any]]:
    """Recent runs of the `tenants`' models (None: all), newest first; only `tenant`'s when
    given, and ids below `before` for paging."""
    with store.session() as s:
        q = only(select(Run, Model.tenant, Model.name).join(Model), tenants)
        q = q.order_by(Run.id.desc()).limit(limit)
        if model:
            q = q.where(Run.model_id == get_model(s, model, tenants, tenant=tenant).id)
        elif tenant is not None:
            q = q.where(Model.tenant == tenant)
        if status:
            q = q.where(Run.status == status)
        if before is not None:
            q = q.where(Run.id < before)
        return [
            {**run_dict(r, qualified(tenant_, name)), "tenant": tenant_}
            for r, tenant_, name in s.execute(q)
        ]


def run_log(
    store: Store, model: str, run_id: int | None = None, tenants: frozenset[str] | None = None
) -> tuple[dict[str, Any], str]:
    """A run of `model` (the latest unless named; of the `tenants`, None: any) and its log."""

    found = (
        runs(store, model=model, limit=1, tenants=tenants)
        if run_id is None
        else [
            r for r in runs(store, model=model, limit=10_000, tenants=tenants) if r["id"] == run_id
        ]
    )
    if not found:
        raise NotFoundError(f"no run{'' if run_id is None else f' {run_id}'} of model {model!r}")
    run = found[0]
    return run, _read_log(run["log_path"])


def run_by_id(
    store: Store, run_id: int, tenants: frozenset[str] | None = None
) -> tuple[dict[str, Any], str]:
    """Run `run_id` (with its tenant) and where its log is; NotFoundError when not visible."""
    with store.session() as s:
        q = select(Run, Model.name, Model.tenant).join(Model).where(Run.id == run_id)
        if tenants is not None:
            q = q.where(Model.tenant.in_(tenants))
        row = s.execute(q).first()
        if row is None:
            raise NotFoundError(f"no run with id {run_id}")
        r, name, tenant = row
        return {**run_dict(r, qualified(tenant, name)), "tenant": tenant}, tenant


def _read_log(log_path: str | None, max_bytes: int | None = None) -> str:
    """A run's log text (the worker redacted it while writing); the last `max_bytes` only."""
    from pathlib import Path

    path = Path(log_path) if log_path else None
    if path is None or not path.is_file():
        return ""
    if max_bytes is None:
        return path.read_text()
    with path.open("rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(max(0, size - max_bytes))
        return fh.read().decode("utf-8", errors="replace")


def read_log(log_path: str | None, max_bytes: int) -> tuple[str, bool]:
    """The last `max_bytes` of a run's log and whether it was cut."""
    from pathlib import Path

    size = Path(log_path).stat().st_size if log_path and Path(log_path).is_file() else 0
    return _read_log(log_path, max_bytes), size > max_bytes
