"""Which repository is the deploy repo, how it is laid out, and keeping a cloned one in sync.

`paths.deploy` names a folder (the workspace itself by default, or another repository) or a
Git URL. A URL is cloned into `<state_dir>/deploy-repo`, fast-forwarded from its remote the
first time each loaded workspace opens it, and pushed to after each commit modelworks makes
on its main branch. `gitops.layout` says where configs live in it (see gitops/deploy.py).

The layout and the workspace are registered by the repository's path, so the functions that
take only a repository path (read_env, config paths) find them.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelworks import _git
from modelworks.errors import DeployError, GitError

if TYPE_CHECKING:
    from modelworks.workspace import Workspace

MODELWORKS = "modelworks"
REFERENCE = "reference"
MODEL_SUFFIX = "-model"
URL_PREFIXES = ("https://", "http://", "ssh://", "git://", "file://", "git@")
CLONE_DIR = "deploy-repo"


@dataclass(frozen=True)
class DeployRepo:
    """The deploy repository of a workspace: where it is checked out, its layout, its URL."""

    path: Path
    layout: str
    url: str | None
    workspace: Workspace


_KNOWN: dict[str, DeployRepo] = {}


def deployment_name(model: str, layout: str) -> str:
    """The name a model deploys under: in the reference layout without a trailing `-model`
    (`churn-predictor-model` -> `churn-predictor`); the model's own name otherwise."""
    if layout == REFERENCE and model.endswith(MODEL_SUFFIX) and len(model) > len(MODEL_SUFFIX):
        return model[: -len(MODEL_SUFFIX)]
    return model


def model_names(deployment: str) -> list[str]:
    """The spec names a reference deployment name may stand for, the `-model` one first."""
    if deployment.endswith(MODEL_SUFFIX):
        return [deployment]
    return [f"{deployment}{MODEL_SUFFIX}", deployment]


def is_url(value: str) -> bool:
    """True when `paths.deploy` names a remote repository rather than a folder."""
    return value.startswith(URL_PREFIXES)


def _key(path: Path) -> str:
    return os.path.realpath(path)


def open_repo(ws: Workspace) -> Path:
    """The local checkout of the workspace's deploy repo (cloned and synced for a URL)."""
    value = ws.settings.paths.deploy
    url = value if is_url(value) else None
    path = ws.state_dir / CLONE_DIR if url else ws.path(value)
    _KNOWN[_key(path)] = DeployRepo(path, ws.settings.gitops.layout, url, ws)
    synced = ws.__dict__.setdefault("_deploy_synced", set())  # once per loaded workspace
    if url and url not in synced:
        _sync(path, url)
        synced.add(url)
    return path


def pull(ws: Workspace) -> None:
    """Fast-forward a cloned deploy repo from its URL now (the controller, once per tick)."""
    if is_url(ws.settings.paths.deploy):
        ws.__dict__.setdefault("_deploy_synced", set()).discard(ws.settings.paths.deploy)
        open_repo(ws)


def info_of(repo: Path) -> DeployRepo | None:
    """What a workspace registered about this repository (None for an unknown one)."""
    return _KNOWN.get(_key(repo))


def layout_of(repo: Path) -> str:
    """The layout of the deploy repo at `repo`: `modelworks` unless a workspace said otherwise."""
    info = info_of(repo)
    return info.layout if info else MODELWORKS


def _sync(path: Path, url: str) -> None:
    """Clone `url` into `path`, or fast-forward the clone to its remote's branch."""
    if not (path / ".git").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            _git.git(path.parent, "clone", "-q", url, str(path))
        except GitError as exc:
            raise DeployError(f"cannot clone the deploy repository {url}: {exc}") from None
        if _git.head(path) is None:  # an empty remote: start its main branch here
            _git.git(path, "symbolic-ref", "HEAD", "refs/heads/main")
        return
    branch = _branch(path)
    try:
        _git.git(path, "fetch", "-q", "origin")
    except GitError as exc:
        raise DeployError(f"cannot fetch the deploy repository {url}: {exc}") from None
    remote = _git.head(path, f"refs/remotes/origin/{branch}")
    if remote is None:
        return
    out = _git.git(path, "merge", "-q", "--ff-only", remote, check=False)
    if _git.head(path) != remote and not _ahead(path, remote):
        raise DeployError(
            f"the clone {path} of {url} has diverged from {branch} on the remote ({out.strip()}); "
            f"remove {path} to clone it again"
        )


def _branch(path: Path) -> str:
    return _git.git(path, "symbolic-ref", "--short", "HEAD").strip()


def _ahead(path: Path, remote: str) -> bool:
    """True when the clone has commits the remote lacks on top of it (an earlier push failed)."""
    args = ["git", "-C", str(path), "merge-base", "--is-ancestor", remote, "HEAD"]
    return subprocess.run(args, capture_output=True).returncode == 0


def publish(repo: Path, ref: str | None = None) -> None:
    """Push the main branch of a cloned deploy repo to its URL (nothing for a local one).

    `ref`: the ref just moved; only the checked-out branch is pushed.
    """
    info = info_of(repo)
    if info is None or info.url is None:
        return
    branch = _branch(repo)
    if ref is not None and ref != f"refs/heads/{branch}":
        return
    try:
        _git.git(repo, "push", "-q", "origin", f"refs/heads/{branch}:refs/heads/{branch}")
    except GitError as exc:
        raise DeployError(
            f"committed to {repo} but could not push to {info.url}: {exc}; "
            "run the command again after the remote is reachable (the commit is kept)"
        ) from None
