"""The repositories the controller watches and what changed in each since the last reconcile.

The workspace's parts (models, pipelines, data, deploy) may all live in the workspace's own
repository or in separate ones (a local path each). Data repositories named by URL in specs
(`data_source.repo_url`) are checked with `git ls-remote`; plan fetches them into `.mw/repos/`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from modelworks import _git
from modelworks._deployrepo import REFERENCE, layout_of
from modelworks.data.sources import URL_PREFIXES
from modelworks.errors import GitError
from modelworks.gitops.deploy import DEPLOY_DIR
from modelworks.spec import _read_raw, spec_files
from modelworks.workspace import CONFIG_FILE, Workspace

PARTS = ("models", "pipelines", "data", "deploy")


@dataclass(frozen=True)
class WatchedRepo:
    """A repository and the workspace parts it holds (as paths relative to its root)."""

    key: str
    root: Path | None = None
    url: str | None = None
    parts: tuple[tuple[str, str], ...] = ()

    def head(self) -> str | None:
        """The commit the repository's HEAD (or the URL's default branch) names now."""
        if self.url is not None:
            out = _git.git(Path.cwd(), "ls-remote", self.url, "HEAD", check=False).split()
            return out[0] if out else None
        assert self.root is not None
        return _git.head(self.root)


@dataclass
class Change:
    """What moved in one repository between two commits."""

    repo: str
    old: str | None
    new: str
    parts: set[str] = field(default_factory=set)
    spec_files: list[Path] = field(default_factory=list)

    @property
    def full(self) -> bool:
        """True when anything but single spec files changed (or the old commit is unknown)."""
        return bool(self.parts & {"pipelines", "data", "config", "unknown"})


def toplevel(path: Path) -> Path | None:
    """The root of the git repository holding `path`, or None."""
    probe = path if path.is_dir() else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    out = _git.git(probe, "rev-parse", "--show-toplevel", check=False).strip()
    return Path(out).resolve() if out else None


def _part_dirs(ws: Workspace) -> dict[str, Path]:
    return {
        "models": ws.models_dir,
        "pipelines": ws.pipelines_dir,
        "data": ws.data_dir,
        # The reference layout has environments at the deploy repo's root.
        "deploy": ws.deploy_repo / ("" if layout_of(ws.deploy_repo) == REFERENCE else DEPLOY_DIR),
    }


def workspace_repos(ws: Workspace) -> list[WatchedRepo]:
    """The local repositories of the workspace's parts, each listed once."""
    groups: dict[Path, list[tuple[str, str]]] = {}
    root = ws.root.resolve()
    groups[root] = [("config", CONFIG_FILE)]
    for part, folder in _part_dirs(ws).items():
        top = toplevel(folder) or root
        rel = os.path.relpath(folder.resolve(), top)
        groups.setdefault(top, []).append((part, "" if rel == "." else rel))
    return [
        WatchedRepo("workspace" if top == root else f"repo:{top}", root=top, parts=tuple(p))
        for top, p in groups.items()
    ]


def data_repo_urls(ws: Workspace) -> list[WatchedRepo]:
    """Remote data repositories named by URL in the specs."""
    urls = set()
    for path in spec_files(ws.models_dir):
        try:
            ds = _read_raw(path).get("data_source")
        except Exception:  # a broken spec is plan's to report
            continue
        url = ds.get("repo_url") if isinstance(ds, dict) else None
        if isinstance(url, str) and url.startswith(URL_PREFIXES):
            urls.add(url)
    return [WatchedRepo(f"url:{u}", url=u, parts=(("data", ""),)) for u in sorted(urls)]


def classify(repo: WatchedRepo, old: str | None, new: str) -> Change:
    """Which parts changed between `old` and `new` (everything, when `old` is unknown)."""
    change = Change(repo.key, old, new)
    if repo.root is None or old is None:
        change.parts = {p for p, _ in repo.parts} | {"unknown"}
        return change
    try:
        names = _git.git(repo.root, "diff", "--name-only", "--no-renames", old, new).splitlines()
    except GitError:  # the old commit is gone (a force-push): treat as unknown
        change.parts = {p for p, _ in repo.parts} | {"unknown"}
        return change
    for name in names:
        for part, prefix in repo.parts:
            if _under(name, prefix, part):
                change.parts.add(part)
                if part == "models":
                    change.spec_files.append(repo.root / name)
    return change


def _under(name: str, prefix: str, part: str) -> bool:
    if part == "config":
        return name == prefix
    return prefix == "" or name == prefix or name.startswith(prefix.rstrip("/") + "/")
