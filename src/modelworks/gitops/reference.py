"""Reference-layout configs: the five keys a config holds, completed from the registry.

A config in the reference layout says only chart_path, name, image_repository,
image_namespace and version. Modelworks needs more (the artifact digest, the runtime, the
fingerprint): they are looked up in the registry by model and version, trying the spec name
`<name>-model` first and then `<name>` (the `-model` mapping), and the model's name in the
registry becomes the config's `name`. A version the registry does not know (a config written
by another system) keeps the deployment name, and its digest is asked of the OCI registry the
config names (`oci://{image_repository}/{image_namespace}/{name}:{version}`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from modelworks._deployrepo import MODEL_SUFFIX, REFERENCE, info_of, model_names
from modelworks.errors import NotFoundError
from modelworks.gitops.deploy import DeployConfig
from modelworks.registry.models import Model, ModelVersion

if TYPE_CHECKING:
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

MANIFEST_ACCEPT = (
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
)


def registered_name(
    store: Store, ref: str, layout: str, tenants: frozenset[str] | None = None
) -> str:
    """The registry's qualified name for `ref`, a model or (reference layout) a deployment
    name: `churn-predictor` finds `churn-predictor-model` when only that one is registered."""
    from modelworks.registry.queries import resolve_model

    try:
        return resolve_model(store, ref, tenants)
    except NotFoundError:
        if layout != REFERENCE or ref.endswith(MODEL_SUFFIX):
            raise
        try:
            return resolve_model(store, f"{ref}{MODEL_SUFFIX}", tenants)
        except NotFoundError:
            pass
        raise


def image_ref(cfg: DeployConfig, deployment: str) -> str:
    """The image the reference chart builds from a config."""
    return f"oci://{cfg.image_repository}/{cfg.image_namespace}/{deployment}:{cfg.version}"


def resolve_configs(repo: Path, configs: list[DeployConfig]) -> None:
    """Complete, in place, the configs that lack a digest (model name, digest, runtime, URI)."""
    need = [c for c in configs if not c.artifact_digest]
    info = info_of(repo)
    if not need or info is None:
        return
    rows = _versions(info.workspace, need)
    for cfg in need:
        deployment = cfg.name
        cfg.artifact_uri = cfg.artifact_uri or image_ref(cfg, deployment)
        found = next(
            (
                rows[k]
                for n in model_names(deployment)
                if (k := (cfg.tenant, n, cfg.version)) in rows
            ),
            None,
        )
        if found is None:
            cfg.artifact_digest = _registry_digest(info.workspace, cfg, deployment)
            continue
        name, v = found
        cfg.name = name
        cfg.artifact_digest = v.artifact_digest or ""
        cfg.fingerprint = cfg.fingerprint or v.fingerprint
        cfg.runtime = cfg.runtime or str((v.inputs or {}).get("spec", {}).get("runtime") or "")


def _versions(
    ws: Workspace, configs: list[DeployConfig]
) -> dict[tuple[str, str, str], tuple[str, ModelVersion]]:
    """Registry rows by (tenant, model name, version) for what these configs may name."""
    from modelworks.registry.store import Store

    names = sorted({n for c in configs for n in model_names(c.name)})
    versions = sorted({c.version for c in configs})
    store = Store(ws.registry_url)
    try:
        with store.session() as s:
            found = s.execute(
                select(Model.tenant, Model.name, ModelVersion)
                .join(ModelVersion, ModelVersion.model_id == Model.id)
                .where(Model.name.in_(names), ModelVersion.version.in_(versions))
            ).all()
    finally:
        store.close()
    return {(t, n, v.version): (n, v) for t, n, v in found}


def _registry_digest(ws: Workspace, cfg: DeployConfig, deployment: str) -> str:
    """The manifest digest the OCI registry answers for the config's image ('' if none)."""
    import httpx

    scheme = "http" if ws.settings.oci.insecure else "https"
    url = (
        f"{scheme}://{cfg.image_repository}/v2/{cfg.image_namespace}/{deployment}"
        f"/manifests/{cfg.version}"
    )
    try:
        resp = httpx.head(url, headers={"Accept": MANIFEST_ACCEPT}, timeout=5.0)
    except httpx.HTTPError:
        return ""
    digest: Any = resp.headers.get("Docker-Content-Digest", "")
    return str(digest) if resp.status_code == 200 else ""
