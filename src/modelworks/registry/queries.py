"""Read-side queries behind `mw status`, `mw show`, `mw runs` and `mw logs`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from modelworks.errors import NotFoundError, did_you_mean
from modelworks.registry.models import Deployment, Model, ModelVersion, Run
from modelworks.registry.store import Store


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
        "duration": r.duration,
        "train_seconds": r.train_seconds,
        "log_path": r.log_path,
        "created_at": _iso(r.created_at),
        "started_at": _iso(r.started_at),
        "finished_at": _iso(r.finished_at),
    }


def get_model(
    s: Any, name: str, tenant: str | None = None, tenants: frozenset[str] | None = None
) -> Model:
    """The model named `name` (in `tenant` when given, among `tenants`); NotFoundError else."""
    q = select(Model).where(Model.name == name)
    names_q = select(Model.name)
    if tenant is not None:
        q, names_q = q.where(Model.tenant == tenant), names_q.where(Model.tenant == tenant)
    if tenants is not None:
        q, names_q = q.where(Model.tenant.in_(tenants)), names_q.where(Model.tenant.in_(tenants))
    model: Model | None = s.scalars(q.order_by(Model.id).limit(1)).first()
    if model is None:
        where = "in the registry" if tenant is None else f"in tenant {tenant!r}"
        names = s.scalars(names_q).all()
        raise NotFoundError(f"no model named {name!r} {where}.{did_you_mean(name, names)}")
    return model


def status(store: Store, tenants: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """One row per model: latest version, its status and metrics, and what each env serves."""
    with store.session() as s:
        q = select(Model).order_by(Model.name)
        if tenants is not None:
            q = q.where(Model.tenant.in_(tenants))
        return status_rows(s, list(s.scalars(q)))


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
                "name": m.name,
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
    store: Store, name: str, tenant: str | None = None, tenants: frozenset[str] | None = None
) -> dict[str, Any]:
    """Everything the registry knows about one model."""
    with store.session() as s:
        m = get_model(s, name, tenant, tenants)
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
                "scan": _scan_status(latest_ok.scan),
            }
        return {
            "name": m.name,
            "tenant": m.tenant,
            "pipeline": m.pipeline,
            "spec_path": m.spec_path,
            "labels": m.labels,
            "artifact": artifact,
            "sbom": _sbom(m.name, latest_ok),
            "latest": version_dict(versions[0]) if versions else None,
            "versions": [version_dict(v) for v in versions],
            "deployments": current,
        }


def _scan_status(scan: Any) -> str:
    """'safe', 'unsafe' or 'unknown' (a missing or unrecognised scan result)."""
    if isinstance(scan, dict) and isinstance(scan.get("safe"), bool):
        return "safe" if scan["safe"] else "unsafe"
    return "unknown"


def _sbom(name: str, v: ModelVersion | None) -> dict[str, Any] | None:
    """Summary of the artifact's sbom.json (format, spec, components, key packages)."""
    if v is None or not v.artifact_digest or not v.oci_layout:
        return None
    from modelworks.artifacts.sbom import artifact_sbom

    return {"version": v.version, **artifact_sbom(v.oci_layout, name, v.artifact_digest)}


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
    """Recent runs, newest first (only `tenants`' when given; ids below `before` for paging)."""
    with store.session() as s:
        q = select(Run, Model.name).join(Model).order_by(Run.id.desc()).limit(limit)
        if model:
            q = q.where(Run.model_id == get_model(s, model, tenant, tenants).id)
        elif tenant is not None:
            q = q.where(Model.tenant == tenant)
        if tenants is not None:
            q = q.where(Model.tenant.in_(tenants))
        if status:
            q = q.where(Run.status == status)
        if before is not None:
            q = q.where(Run.id < before)
        return [run_dict(r, name) for r, name in s.execute(q)]


def run_log(store: Store, model: str, run_id: int | None = None) -> tuple[dict[str, Any], str]:
    """A run of `model` (the latest unless named) and its log text."""
    found = (
        runs(store, model=model, limit=1)
        if run_id is None
        else [r for r in runs(store, model=model, limit=10_000) if r["id"] == run_id]
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
        return run_dict(row[0], row[1]), row[2]


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
