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
from modelworks.tenancy.names import qualified, split_ref

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
    """(qualified model, tenant, version row) to push: served versions plus each model's
    latest registered."""
    from modelworks.registry.queries import get_model

    served = _served(ws)
    with store.session() as s:
        q = select(Model)
        if names:
            q = q.where(Model.name.in_(sorted({split_ref(n)[1] for n in names})))
        found = list(s.scalars(q))
        by_key = {qualified(m.tenant, m.name): m for m in found}
        wanted = set(names or by_key)
        for ref in sorted(wanted - set(by_key)):
            m = get_model(s, ref)  # NotFoundError with a suggestion, or the one tenant's model
            wanted.add(qualified(m.tenant, m.name))
        models = {m.id: m for key, m in by_key.items() if key in wanted}
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
    keys = {mid: qualified(m.tenant, m.name) for mid, m in models.items()}
    for v in sorted(rows, key=lambda r: (keys[r.model_id], r.id)):
        m = models[v.model_id]
        if v.id in latest_ids or (keys[v.model_id], v.version) in served:
            out.append((keys[v.model_id], m.tenant, v))
    return out


def _repositories(ws: Workspace, name: str, tenant: str, v: ModelVersion) -> tuple[str, str]:
    """The version's repository in the local store and in the registry (`<namespace>/<model>`,
    the namespace being the tenant's; `oci.namespace` for the default tenant)."""
    from modelworks._deployrepo import deployment_name, layout_of
    from modelworks.registry.fastread import layout_repo
    from modelworks.registry.tenants import oci_namespace

    local = layout_repo(v.oci_layout) if v.oci_layout else name
    # The reference layout's chart pulls {image_namespace}/{name}: the deployment name.
    remote = deployment_name(split_ref(name)[1], layout_of(ws.deploy_repo))
    return local, f"{oci_namespace(ws, tenant).strip('/')}/{remote}"


def _push_one(
    ws: Workspace, oci: Any, name: str, tenant: str, v: ModelVersion, auth: Any
) -> dict[str, Any]:
    from modelworks.artifacts.push import push

    settings = ws.settings.oci
    if not v.artifact_ref:
        raise ArtifactError(f"{name} {v.version} has no artifact in the local store to push")
    local, repository = _repositories(ws, name, tenant, v)
    image = oci.resolve(local, v.artifact_ref)
    if v.artifact_digest and image.digest != v.artifact_digest:
        raise ArtifactError(
            f"{name}:{v.artifact_ref} in {oci.root} is {image.digest}, but the "
            f"registry recorded {v.artifact_digest}; run `mw fsck`"
        )
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
            row = _push_version(ws, oci, auth, name, tenant, v, force)
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
    ws: Workspace, oci: Any, auth: Any, name: str, tenant: str, v: ModelVersion, force: bool
) -> dict[str, Any]:
    host = str(ws.settings.oci.registry).split("://", 1)[-1].rstrip("/")
    target = f"{host}/{_repositories(ws, name, tenant, v)[1]}:{v.version}"
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
        return {**row, **_push_one(ws, oci, name, tenant, v, auth), "status": "pushed"}
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
