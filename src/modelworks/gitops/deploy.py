"""deploy/<env>/<model>/config.yaml: what each environment serves, read and written in Git.

A tenant's model lives at deploy/<env>/<tenant>/<model>/config.yaml; the default tenant's
keeps deploy/<env>/<model>/config.yaml, so repositories from before tenants keep working.
Configs are listed and keyed by qualified name (`acme/churn`, or bare `churn`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import BaseModel, ConfigDict

from modelworks import _git
from modelworks.tenancy.names import oci_repository, qualified

if TYPE_CHECKING:
    from modelworks.workspace import Workspace

DEPLOY_DIR = "deploy"
CONFIG_NAME = "config.yaml"


class DeployConfig(BaseModel):
    """One model in one environment; the first five keys are the reference system's."""

    model_config = ConfigDict(extra="allow")

    chart_path: str = "charts/modelcar"
    name: str
    image_repository: str
    image_namespace: str
    version: str
    runtime: str
    artifact_digest: str
    artifact_uri: str
    fingerprint: str = ""
    tenant: str = "default"

    def to_yaml(self) -> str:
        return str(yaml.safe_dump(self.model_dump(), sort_keys=False))

    @property
    def qualified(self) -> str:
        """`tenant/name`, bare for the default tenant: the key of this config (a name that
        already holds a '/' is taken as written)."""
        return self.name if "/" in self.name else qualified(self.tenant, self.name)


def config_path(env: str, model: str, tenant: str | None = None) -> str:
    """The repo-relative path of a model's config in an environment.

    `model` is a qualified name (`acme/churn` -> deploy/<env>/acme/churn/config.yaml, bare
    `churn` -> deploy/<env>/churn/config.yaml), or a bare name with its `tenant`.
    """
    ref = qualified(tenant, model) if tenant is not None and "/" not in model else model
    return f"{DEPLOY_DIR}/{env}/{ref}/{CONFIG_NAME}"


def read_env(repo: Path, env: str, ref: str = "HEAD") -> dict[str, DeployConfig]:
    """Every model deployed in `env` at `ref` of the deploy repo, by qualified name (both
    layouts: deploy/<env>/<model>/ and deploy/<env>/<tenant>/<model>/)."""
    paths = [p for p in _git.ls_files(repo, ref, f"{DEPLOY_DIR}/{env}/") if p.endswith(CONFIG_NAME)]
    contents = _git.cat_files(repo, ref, paths)
    configs: dict[str, DeployConfig] = {}
    for text in contents.values():
        cfg = DeployConfig.model_validate(yaml.safe_load(text))
        configs[cfg.qualified] = cfg
    return configs


def read_worktree_env(repo: Path, env: str) -> dict[str, DeployConfig]:
    """Every model in `env` as the work tree has it (uncommitted changes included)."""
    configs: dict[str, DeployConfig] = {}
    for path in sorted((repo / DEPLOY_DIR / env).glob(f"**/{CONFIG_NAME}")):
        cfg = DeployConfig.model_validate(yaml.safe_load(path.read_text()))
        configs[cfg.qualified] = cfg
    return configs


def list_env(repo: Path, env: str, ref: str = "HEAD") -> list[DeployConfig]:
    """Every config of `env` at `ref`, of every tenant (two tenants may each have a `churn`)."""
    paths = [p for p in _git.ls_files(repo, ref, f"{DEPLOY_DIR}/{env}/") if p.endswith(CONFIG_NAME)]
    contents = _git.cat_files(repo, ref, paths)
    return [
        DeployConfig.model_validate(yaml.safe_load(contents[p])) for p in paths if p in contents
    ]


def write_configs(repo: Path, env: str, configs: list[DeployConfig]) -> list[str]:
    """Write configs into the work tree; return the repo-relative paths that changed."""
    changed: list[str] = []
    for cfg in configs:
        rel = config_path(env, cfg.name, cfg.tenant)
        target = repo / rel
        text = cfg.to_yaml()
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
    return _git.commit(repo, changed, message, author=author)


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
    if oci.registry:
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
