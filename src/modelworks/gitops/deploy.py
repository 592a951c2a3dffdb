"""What each environment serves, read and written in Git, in one of two layouts.

`gitops.layout: modelworks` (the default): deploy/<env>/<model>/config.yaml; a tenant's model
at deploy/<env>/<tenant>/<model>/config.yaml (the default tenant's keeps the short path, so
repositories from before tenants keep working).

`gitops.layout: reference`: <env>/<deployment>/config.yaml at the repository's root (a
tenant's at <env>/<tenant>/<deployment>/config.yaml), holding exactly the reference keys
chart_path, name, image_repository, image_namespace and version. The deployment name is the
model's with a trailing `-model` dropped (spec `churn-predictor-model` deploys as
`churn-predictor`); what else modelworks needs (digest, runtime, URI) is resolved through the
registry when a config is read (gitops/reference.py).

Configs are listed and keyed by qualified model name (`acme/churn`, or bare `churn`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import BaseModel, ConfigDict

from modelworks import _git
from modelworks._deployrepo import (
    MODEL_SUFFIX,
    MODELWORKS,
    REFERENCE,
    deployment_name,
    layout_of,
    publish,
)
from modelworks.errors import ConfigError
from modelworks.names import check_name
from modelworks.tenancy.access import DEFAULT_TENANT
from modelworks.tenancy.names import oci_repository, qualified, split_ref

if TYPE_CHECKING:
    from modelworks.workspace import Workspace

DEPLOY_DIR = "deploy"
CONFIG_NAME = "config.yaml"
REFERENCE_KEYS = ("chart_path", "name", "image_repository", "image_namespace", "version")
# What a config in the modelworks layout always carries (the reference layout resolves them).
MODELWORKS_KEYS = ("runtime", "artifact_digest", "artifact_uri")


class DeployConfig(BaseModel):
    """One model in one environment; the first five keys are the reference system's."""

    model_config = ConfigDict(extra="allow")

    chart_path: str = "charts/modelcar"
    name: str
    image_repository: str
    image_namespace: str
    version: str
    runtime: str = ""
    artifact_digest: str = ""
    artifact_uri: str = ""
    fingerprint: str = ""
    tenant: str = "default"

    def to_yaml(self, layout: str = MODELWORKS) -> str:
        """The config.yaml text: every key, or in the reference layout exactly the five."""
        data = self.model_dump()
        if layout == REFERENCE:
            data = {k: data[k] for k in REFERENCE_KEYS}
            data["name"] = deployment_name(self.name, layout)
        return str(yaml.safe_dump(data, sort_keys=False))

    @property
    def qualified(self) -> str:
        """`tenant/name`, bare for the default tenant: the key of this config (a name that
        already holds a '/' is taken as written)."""
        return self.name if "/" in self.name else qualified(self.tenant, self.name)


def env_prefix(env: str, layout: str = MODELWORKS) -> str:
    """The folder (with a trailing '/') holding an environment's configs in the deploy repo."""
    check_name("environment", env)
    return f"{env}/" if layout == REFERENCE else f"{DEPLOY_DIR}/{env}/"


def config_path(env: str, model: str, tenant: str | None = None, layout: str = MODELWORKS) -> str:
    """The repo-relative path of a model's config in an environment.

    `model` is a qualified name (`acme/churn` -> deploy/<env>/acme/churn/config.yaml, bare
    `churn` -> deploy/<env>/churn/config.yaml), or a bare name with its `tenant`. Every part
    must be a plain name, so the path stays inside the deploy repo.
    """
    if layout == REFERENCE:
        owner, name = split_ref(model)  # plain names only
        ref = qualified(owner or tenant or DEFAULT_TENANT, deployment_name(name, layout))
    else:
        ref = qualified(tenant, model) if tenant is not None and "/" not in model else model
    _check_inside(ref, model)
    return f"{env_prefix(env, layout)}{ref}/{CONFIG_NAME}"


def _check_inside(ref: str, model: str) -> None:
    """A model's folder is one or two plain path segments: nothing climbs out of the repo."""
    parts = ref.split("/")
    if len(parts) > 2 or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        raise ConfigError(
            f"model {model!r} does not name a folder inside the deploy repository "
            "(use NAME or TENANT/NAME)"
        )


def config_paths(paths: list[str], env: str, layout: str) -> list[str]:
    """The config files among `paths`: <prefix><model>/config.yaml or <prefix><t>/<m>/..."""
    prefix, suffix = env_prefix(env, layout), f"/{CONFIG_NAME}"
    return [
        p
        for p in paths
        if p.startswith(prefix) and p.endswith(suffix) and p[len(prefix) :].count("/") in (1, 2)
    ]


def parse_config(text: str, path: str, env: str, layout: str) -> DeployConfig:
    """A config read from `path`; in the reference layout its tenant comes from the path."""
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    if layout == REFERENCE and "tenant" not in data:
        parts = path[len(env_prefix(env, layout)) :].split("/")
        data["tenant"] = parts[0] if len(parts) == 3 else DEFAULT_TENANT
    missing = [k for k in MODELWORKS_KEYS if k not in data] if layout != REFERENCE else []
    if missing:
        raise ConfigError(
            f"{path}: missing key {missing[0]!r}; a config in the modelworks layout carries "
            f"{', '.join(MODELWORKS_KEYS)} (set gitops.layout: reference for a repository "
            "whose configs have only the reference keys)"
        )
    return DeployConfig.model_validate(data)


def _load(repo: Path, env: str, texts: dict[str, str]) -> list[DeployConfig]:
    layout = layout_of(repo)
    configs = [parse_config(texts[p], p, env, layout) for p in texts]
    if layout == REFERENCE:
        from modelworks.gitops.reference import resolve_configs

        resolve_configs(repo, configs)
    return configs


def read_env(repo: Path, env: str, ref: str = "HEAD") -> dict[str, DeployConfig]:
    """Every model deployed in `env` at `ref` of the deploy repo, by qualified name (of
    every tenant)."""
    return {c.qualified: c for c in list_env(repo, env, ref)}


def read_worktree_env(repo: Path, env: str) -> dict[str, DeployConfig]:
    """Every model in `env` as the work tree has it (uncommitted changes included)."""
    prefix = env_prefix(env, layout_of(repo))
    found = sorted((repo / prefix).glob(f"**/{CONFIG_NAME}"))
    rel = config_paths([p.relative_to(repo).as_posix() for p in found], env, layout_of(repo))
    return {c.qualified: c for c in _load(repo, env, {p: (repo / p).read_text() for p in rel})}


def read_worktree_configs(repo: Path, env: str, models: list[str]) -> dict[str, DeployConfig]:
    """The configs of just these models (qualified names) in the work tree, by qualified
    name: what a deploy of a few models needs, without reading the whole environment."""
    layout = layout_of(repo)
    texts = {}
    for model in models:
        rel = config_path(env, model, layout=layout)
        if (repo / rel).is_file():
            texts[rel] = (repo / rel).read_text()
    return {c.qualified: c for c in _load(repo, env, texts)}


def list_env(repo: Path, env: str, ref: str = "HEAD") -> list[DeployConfig]:
    """Every config of `env` at `ref`, of every tenant (two tenants may each have a `churn`)."""
    layout = layout_of(repo)
    paths = config_paths(_git.ls_files(repo, ref, env_prefix(env, layout)), env, layout)
    contents = _git.cat_files(repo, ref, paths)
    return _load(repo, env, {p: contents[p] for p in paths if p in contents})


def write_configs(repo: Path, env: str, configs: list[DeployConfig]) -> list[str]:
    """Write configs into the work tree; return the repo-relative paths that changed."""
    layout = layout_of(repo)
    changed: list[str] = []
    seen: dict[str, str] = {}
    for cfg in configs:
        rel = config_path(env, cfg.name, cfg.tenant, layout)
        if seen.setdefault(rel, cfg.qualified) != cfg.qualified:
            raise ConfigError(
                f"models {seen[rel]!r} and {cfg.qualified!r} both deploy to {rel} (a trailing "
                f"{MODEL_SUFFIX!r} is dropped in the reference layout); rename one"
            )
        target = repo / rel
        text = cfg.to_yaml(layout)
        if target.exists() and target.read_text() == text:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(target)
        changed.append(rel)
    return changed


def deploy(
    repo: Path, env: str, configs: list[DeployConfig], message: str, author: str | None = None
) -> str | None:
    """Write and commit configs to `env`; return the commit sha, or None if nothing changed."""
    changed = write_configs(repo, env, configs)
    if not changed:
        return None
    sha = _git.commit(repo, changed, message, author=author)
    publish(repo)
    return sha


def deploy_config(
    ws: Workspace,
    name: str,
    tenant: str,
    runtime: str,
    version: str,
    fingerprint: str,
    digest: str,
    layout: str,
    *,
    namespace: str | None = None,
) -> DeployConfig:
    """The config.yaml content for a registered version (`namespace`: the tenant's OCI
    namespace, by default read from its declared settings)."""
    oci = ws.settings.oci
    if namespace is None:
        from modelworks.registry.tenants import oci_namespace

        namespace = oci_namespace(ws, tenant)
    if oci.registry and layout_of(ws.deploy_repo) == REFERENCE:
        # The reference chart pulls oci://{image_repository}/{image_namespace}/{name}:{version}.
        repo = oci.registry.split("://", 1)[-1].rstrip("/")
        uri = f"oci://{repo}/{namespace}/{deployment_name(name, REFERENCE)}:{version}"
    elif oci.registry:
        repo = f"{oci.registry}/{namespace}/{name}"
        uri = f"oci://{repo}:{version}"
    else:
        repo = oci_repository(tenant, name, namespace)
        rel = os.path.relpath(layout, ws.deploy_repo) if os.path.isabs(layout) else layout
        uri = f"oci:{rel}:{version}"
    return DeployConfig(
        name=name,
        image_repository=repo,
        image_namespace=namespace,
        version=version,
        runtime=runtime,
        artifact_digest=digest,
        artifact_uri=uri,
        fingerprint=fingerprint,
        tenant=tenant,
    )
