"""Deploy repo plumbing: run git, read blobs, build commits in a temporary index, move refs.

Nothing here touches the user's checkout except `advance`/`switch_worktree`, which move a
checked-out main's index and work tree together with the ref, keeping unrelated edits.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from modelworks import _git
from modelworks._deployrepo import layout_of, publish
from modelworks.errors import ConflictError, DeployError, GitError
from modelworks.gitops.deploy import CONFIG_NAME, config_paths, env_prefix

ZERO_SHA = "0" * 40


def run_git(
    repo: Path,
    *args: str,
    input: bytes | None = None,
    author: str | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> str:
    """`git -C repo args` with an optional author identity and extra environment."""
    extra = {**(_git.identity(repo, author) if author else {}), **(env or {})}
    return _git.git(repo, *args, input=input, check=check, env=extra)


@dataclass(frozen=True)
class RepoState:
    """The deploy repo's main branch (HEAD's), its tip, and whether a work tree has it out."""

    repo: Path
    branch: str
    tip: str
    worktree: bool


def repo_state(repo: Path) -> RepoState:
    """Where HEAD points in the deploy repo; a clear error when it is not usable."""
    if not repo.exists():
        raise DeployError(
            f"the deploy repository {repo} does not exist; check paths.deploy in modelworks.yaml"
        )
    bare, _, prefix = run_git(
        repo, "rev-parse", "--is-bare-repository", "--show-prefix", check=False
    ).partition("\n")
    if bare not in ("true", "false"):
        raise DeployError(f"{repo} is not a git repository; paths.deploy must name one")
    if prefix.strip():
        raise DeployError(
            f"{repo} is a folder inside another git repository, not a repository of its own; "
            "paths.deploy must name a repository root (run `git init` there)"
        )
    branch = run_git(repo, "symbolic-ref", "--short", "-q", "HEAD", check=False).strip()
    if not branch:
        raise DeployError(
            f"HEAD of the deploy repository {repo} is detached; check out its "
            "main branch (git switch main)"
        )
    tip = _git.head(repo, f"refs/heads/{branch}")
    if tip is None:
        raise DeployError(f"the deploy repository {repo} has no commits on {branch!r} yet")
    return RepoState(repo, branch, tip, bare == "false")


def tree_blobs(repo: Path, ref: str, prefix: str) -> dict[str, str]:
    """Blob sha of each file under `prefix` at `ref`, by path (one `git ls-tree`)."""
    out = run_git(repo, "ls-tree", "-r", "-z", ref, "--", prefix)
    blobs: dict[str, str] = {}
    for entry in out.split("\0"):
        if entry:
            meta, _, path = entry.partition("\t")
            blobs[path] = meta.split()[2]
    return blobs


def env_blobs(repo: Path, ref: str, env: str) -> dict[str, str]:
    """Blob sha of each model's config in `env` at `ref`, by its folder (`churn`,
    `acme/churn`; the deployment name in the reference layout)."""
    layout = layout_of(repo)
    prefix, suffix = env_prefix(env, layout), f"/{CONFIG_NAME}"
    blobs = tree_blobs(repo, ref, prefix)
    return {p[len(prefix) : -len(suffix)]: blobs[p] for p in config_paths(list(blobs), env, layout)}


def read_blobs(repo: Path, shas: list[str]) -> dict[str, str]:
    """Contents of many blobs (or `rev:path` names) in one `git cat-file --batch`."""
    if not shas:
        return {}
    proc = subprocess.run(
        ["git", "-C", str(repo), "cat-file", "--batch"],
        input="".join(f"{s}\n" for s in shas).encode(),
        capture_output=True,
    )
    if proc.returncode != 0:
        raise GitError(f"git cat-file --batch failed in {repo}: {proc.stderr.decode().strip()}")
    out = proc.stdout
    result, pos = {}, 0
    for sha in shas:
        nl = out.index(b"\n", pos)
        header, pos = out[pos:nl].split(), nl + 1
        if len(header) < 3 or header[1] == b"missing":
            continue
        size = int(header[2])
        result[sha] = out[pos : pos + size].decode(errors="replace")  # never a crash on bytes
        pos += size + 1
    return result


def version_of(text: str) -> str | None:
    """The `version` key of a config.yaml text (None when unreadable)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return str(data["version"]) if isinstance(data, dict) and "version" in data else None


def commit_files(
    repo: Path, parent: str, files: Mapping[str, str], message: str, author: str
) -> str:
    """A commit on top of `parent` with `files` (path -> blob sha) changed; no work tree used."""
    tree = _with_files(repo, parent, files)
    return run_git(
        repo, "commit-tree", tree, "-p", parent, input=message.encode(), author=author
    ).strip()


def write_blob(repo: Path, text: str) -> str:
    """Store `text` as a blob in the repo; return its sha."""
    return run_git(repo, "hash-object", "-w", "--stdin", input=text.encode()).strip()


def update_ref(repo: Path, ref: str, new: str, old: str, reason: str) -> None:
    """Move `ref` to `new` only if it is still at `old` (ZERO_SHA: only if it does not exist)."""
    run_git(repo, "update-ref", "-m", reason, ref, new, old, check=False)
    if _git.head(repo, ref) != new:
        raise ConflictError(f"{ref} in {repo} moved while modelworks was updating it; retry")
    publish(repo, ref)


def dirty_paths(repo: Path, prefix: str) -> list[str]:
    """Uncommitted (or untracked) paths under `prefix` in the work tree."""
    out = run_git(repo, "status", "--porcelain", "-z", "--untracked-files=all", "--", prefix)
    return [e[3:] for e in out.split("\0") if len(e) > 3 and e[2] == " "]


def merge_branch(state: RepoState, branch: str, message: str, actor: str) -> str:
    """Merge `branch` into main with a real merge commit, built with plumbing.

    When main is checked out, the index and work tree move with it (`git read-tree -m -u`,
    a two-tree switch): files the merge does not touch keep their staged or unstaged
    edits, and a local edit to a file the merge changes stops it before anything moves.
    """
    commit = merge_commit(state, branch, message, actor)
    advance(state, commit, f"mw: merge {branch}")
    return commit


def merge_commit(
    state: RepoState,
    branch: str,
    message: str,
    actor: str,
    extra: Mapping[str, str] | None = None,
) -> str:
    """The merge commit of `branch` into main (plus `extra` files, path -> blob), not moved to."""
    out = run_git(
        state.repo, "merge-tree", "--write-tree", "--no-messages", state.tip, branch, check=False
    )
    tree = out.split("\n", 1)[0].strip()
    if len(out.splitlines()) > 1 or not tree:
        raise ConflictError(f"{branch} conflicts with {state.branch}; open a new request")
    if extra:
        tree = _with_files(state.repo, tree, extra)
    return run_git(
        state.repo,
        "commit-tree",
        tree,
        "-p",
        state.tip,
        "-p",
        branch,
        input=message.encode(),
        author=actor,
    ).strip()


def _with_files(repo: Path, tree: str, files: Mapping[str, str]) -> str:
    with tempfile.TemporaryDirectory(prefix="mw-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        run_git(repo, "read-tree", tree, env=env)
        info = "".join(f"100644 {sha}\t{path}\0" for path, sha in files.items())
        run_git(repo, "update-index", "-z", "--index-info", input=info.encode(), env=env)
        return run_git(repo, "write-tree", env=env).strip()


def is_ancestor(repo: Path, commit: str, of: str) -> bool:
    """True when `commit` is `of` or one of its ancestors."""
    args = ("merge-base", "--is-ancestor", commit, of)
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True).returncode == 0


def advance(state: RepoState, new: str, reason: str) -> None:
    """Move main to commit `new` (work tree and index too when main is checked out there)."""
    if state.worktree:
        switch_worktree(state, state.tip, new)
    try:
        update_ref(state.repo, f"refs/heads/{state.branch}", new, state.tip, reason)
    except ConflictError:
        if state.worktree:
            switch_worktree(state, new, state.tip)
        raise


def switch_worktree(state: RepoState, old: str, new: str) -> None:
    """Move the index and work tree from commit `old` to `new`, keeping unrelated local edits."""
    try:
        run_git(state.repo, "read-tree", "-m", "-u", old, new)
    except GitError as exc:
        raise DeployError(
            f"cannot update the work tree of {state.repo}: {exc}; commit or discard the local "
            "changes it names, then try again"
        ) from None
