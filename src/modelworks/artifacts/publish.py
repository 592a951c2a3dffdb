"""Publishing ModelCars: push registered versions from the local OCI store to the registry.

`push_versions` pushes, for each model, the versions the deploy repo serves in any
environment plus its latest registered one, to `<oci.registry>/<oci.namespace>/<model>:
<version>`, and records `ModelVersion.pushed_uri`. Versions already recorded at that
reference are not pushed again (pass `force=True` to re-check them; the push itself
HEADs each blob first, so nothing is uploaded twice either way).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from modelworks.errors import ArtifactError, ConfigError, ModelworksError
from modelworks.registry import audit
from modelworks.registry.models import Model, ModelVersion

UNREACHABLE = "cannot reach OCI registry"

if TYPE_CHECKING:
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace


def _served(ws: Workspace) -> set[tuple[str, str]]:
    """(model, version) pairs that any environment serves at HEAD of the deploy repo."""
    from modelworks import _git
    from modelworks.gitops.deploy import read_env

    if not _git.is_repo(ws.deploy_repo) or _git.head(ws.deploy_repo) is None:
        return set()
    return {
        (name, cfg.version)
        for env in ws.settings.environments
        for name, cfg in read_env(ws.deploy_repo, env).items()
    }


def _candidates(
    ws: Workspace, store: Store, names: list[str] | None
) -> list[tuple[str, str, ModelVersion]]:
    """(model, tenant, version row) to push: served versions plus each model's latest registered."""
    served = _served(ws)
    with store.session() as s:
        q = select(Model)
        if names:
            q = q.where(Model.name.in_(names))
        models = {m.id: m for m in s.scalars(q)}
        missing = sorted(set(names or []) - {m.name for m in models.values()})
        if missing:
            from modelworks.registry.queries import get_model

            get_model(s, missing[0])  # raises NotFoundError with a suggestion
        latest = (
            select(func.max(ModelVersion.id))
            .where(ModelVersion.status == "registered")
            .group_by(ModelVersion.model_id)
        )
        rows = s.scalars(
            select(ModelVersion).where(
                ModelVersion.status == "registered", ModelVersion.model_id.in_(list(models))
            )
        ).all()
        latest_ids = set(s.scalars(latest))
    out = []
    for v in sorted(rows, key=lambda r: (models[r.model_id].name, r.id)):
        m = models[v.model_id]
        if v.id in latest_ids or (m.name, v.version) in served:
            out.append((m.name, m.tenant, v))
    return out


def _push_one(ws: Workspace, oci: Any, name: str, v: ModelVersion, auth: Any) -> dict[str, Any]:
    from modelworks.artifacts.push import push

    settings = ws.settings.oci
    if not v.artifact_ref:
        raise ArtifactError(f"{name} {v.version} has no artifact in the local store to push")
    image = oci.resolve(name, v.artifact_ref)
    if v.artifact_digest and image.digest != v.artifact_digest:
        raise ArtifactError(
            f"{name}:{v.artifact_ref} in {oci.root} is {image.digest}, but the "
            f"registry recorded {v.artifact_digest}; run `mw fsck`"
        )
    repository = f"{settings.namespace.strip('/')}/{name}"
    result = push(
        oci,
        image,
        settings.registry or "",
        repository,
        v.version,
        insecure=settings.insecure,
        auth=auth,
    )
    return {
        "uri": result.uri,
        "digest": result.digest,
        "uploaded": result.uploaded,
        "skipped": result.skipped,
    }


def push_versions(
    ws: Workspace,
    store: Store,
    names: list[str] | None = None,
    *,
    force: bool = False,
    actor: str = "modelworks",
) -> list[dict[str, Any]]:
    """Push each model's served and latest registered versions to `oci.registry`.

    Returns one dict per version: name, version, uri, digest, status ("pushed",
    "up-to-date" or "failed"), uploaded and skipped blob counts, and error.
    """
    from modelworks.artifacts.oci import OCIStore
    from modelworks.artifacts.push import auth_from_env

    registry = ws.settings.oci.registry
    if not registry:
        raise ConfigError(
            "no OCI registry configured: set oci.registry (host[:port]) in "
            "modelworks.yaml or the MW_OCI_REGISTRY environment variable"
        )
    if names is not None and not names:
        return []  # an empty selection means nothing, not the whole fleet
    oci, auth = OCIStore(Path(ws.oci_dir)), auth_from_env()
    results: list[dict[str, Any]] = []
    pushed: dict[int, str] = {}
    events: list[Mapping[str, Any]] = []
    try:
        for name, tenant, v in _candidates(ws, store, names):
            row = _push_version(ws, oci, auth, name, v, force)
            results.append(row)
            if row["status"] == "pushed":
                pushed[v.id] = row["uri"]
                events.append(
                    audit.event(
                        "version.pushed",
                        name,
                        actor=actor,
                        tenant=tenant,
                        after={
                            "version": v.version,
                            "uri": row["uri"],
                            "digest": row["digest"],
                            "uploaded": row["uploaded"],
                        },
                    )
                )
            elif UNREACHABLE in (row["error"] or ""):
                raise ArtifactError(row["error"])  # every other push would fail the same way
    finally:
        _record(store, pushed)
        audit.record(store, events)
    return results


def _push_version(
    ws: Workspace, oci: Any, auth: Any, name: str, v: ModelVersion, force: bool
) -> dict[str, Any]:
    host = str(ws.settings.oci.registry).split("://", 1)[-1].rstrip("/")
    target = f"{host}/{ws.settings.oci.namespace.strip('/')}/{name}:{v.version}"
    row: dict[str, Any] = {
        "name": name,
        "version": v.version,
        "uri": target,
        "digest": v.artifact_digest,
        "uploaded": 0,
        "skipped": 0,
        "error": None,
    }
    if v.pushed_uri == target and not force:
        return {**row, "status": "up-to-date"}
    try:
        return {**row, **_push_one(ws, oci, name, v, auth), "status": "pushed"}
    except ModelworksError as exc:
        return {**row, "status": "failed", "error": str(exc)}


def _record(store: Store, pushed: dict[int, str]) -> None:
    if not pushed:
        return
    with store.session() as s:
        for vid, uri in pushed.items():
            row = s.get(ModelVersion, vid)
            if row is not None:
                row.pushed_uri = uri
