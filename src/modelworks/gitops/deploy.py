"""deploy/<env>/<model>/config.yaml: what each environment serves, read and written in Git."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import BaseModel, ConfigDict

from modelworks import _git

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


def config_path(env: str, model: str) -> str:
    """The repo-relative path of a model's config in an environment."""
    return f"{DEPLOY_DIR}/{env}/{model}/{CONFIG_NAME}"


def read_env(repo: Path, env: str, ref: str = "HEAD") -> dict[str, DeployConfig]:
    """Every model deployed in `env` at `ref` of the deploy repo, by model name."""
    paths = [p for p in _git.ls_files(repo, ref, f"{DEPLOY_DIR}/{env}/") if p.endswith(CONFIG_NAME)]
    contents = _git.cat_files(repo, ref, paths)
    configs: dict[str, DeployConfig] = {}
    for text in contents.values():
        cfg = DeployConfig.model_validate(yaml.safe_load(text))
        configs[cfg.name] = cfg
    return configs


def read_worktree_env(repo: Path, env: str) -> dict[str, DeployConfig]:
    """Every model in `env` as the work tree has it (uncommitted changes included)."""
    configs: dict[str, DeployConfig] = {}
    for path in sorted((repo / DEPLOY_DIR / env).glob(f"**/{CONFIG_NAME}")):
        cfg = DeployConfig.model_validate(yaml.safe_load(path.read_text()))
        configs[cfg.name] = cfg
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
        rel = config_path(env, cfg.name)
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
) -> DeployConfig:
    """The deploy/<env>/<model>/config.yaml content for a registered version."""
    oci = ws.settings.oci
    if oci.registry:
        repo = f"{oci.registry}/{oci.namespace}/{name}"
        uri = f"oci://{repo}:{version}"
    else:
        repo = name
        rel = os.path.relpath(layout, ws.deploy_repo) if os.path.isabs(layout) else layout
        uri = f"oci:{rel}:{version}"
    return DeployConfig(
        name=name,
        image_repository=repo,
        image_namespace=oci.namespace,
        version=version,
        runtime=runtime,
        artifact_digest=digest,
        artifact_uri=uri,
        fingerprint=fingerprint,
        tenant=tenant,
    )
