"""A thin wrapper over the git CLI: the operations the line needs, with clear errors."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from modelworks.errors import GitError

_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "modelworks",
    "GIT_AUTHOR_EMAIL": "line@modelworks.local",
    "GIT_COMMITTER_NAME": "modelworks",
    "GIT_COMMITTER_EMAIL": "line@modelworks.local",
}


def git(
    repo: Path,
    *args: str,
    input: bytes | None = None,
    check: bool = True,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run `git -C repo args...` and return stdout; raise GitError naming the command."""
    env = {**os.environ, **{k: v for k, v in _ENV.items() if k not in os.environ}, **(env or {})}
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], input=input, capture_output=True, env=env
    )
    if check and proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip() or proc.stdout.decode().strip()
        raise GitError(f"git {' '.join(args[:3])} failed in {repo}: {msg}")
    return proc.stdout.decode(errors="replace")


def is_repo(path: Path) -> bool:
    return (path / ".git").exists()


def init(repo: Path) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    if not is_repo(repo):
        git(repo, "init", "-q", "-b", "main")


def head(repo: Path, ref: str = "HEAD") -> str | None:
    """The commit sha of `ref`, or None in a repository with no commits."""
    out = git(repo, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False).strip()
    return out or None


def commit(
    repo: Path,
    paths: Iterable[str | Path],
    message: str,
    author: str | None = None,
    allow_empty: bool = False,
) -> str | None:
    """Stage `paths` (additions and deletions) and commit them; None when nothing changed."""
    rel = [str(p) for p in paths]
    if rel:
        git(repo, "add", "-A", "--", *rel)
    staged = git(repo, "diff", "--cached", "--name-only", "--", *rel).strip()
    if not staged and not allow_empty:
        return None
    args = ["commit", "-q", "--no-verify", "-m", message]
    who = identity(repo, author)
    git(repo, *args, "--", *rel, env=who) if rel else git(repo, *args, env=who)
    return head(repo)


def identity(repo: Path, author: str | None = None) -> dict[str, str]:
    """The GIT_AUTHOR_*/GIT_COMMITTER_* environment of a commit the line makes in `repo`.

    git's configured user.email is used for git's own user (the default actor); another
    actor (`--as bob`, a token's user) is `bob <bob@modelworks.local>`, never git's e-mail.
    Without a configured identity the line commits as `modelworks <line@modelworks.local>`.
    """
    from modelworks.names import NAME_MAX, normalize

    found = git(repo, "config", "--get-regexp", r"^user\.(name|email)$", check=False)
    config = dict(line.partition(" ")[::2] for line in found.splitlines())
    name, email = config.get("user.name", "").strip(), config.get("user.email", "").strip()
    env: dict[str, str] = {}
    if email and "GIT_COMMITTER_EMAIL" not in os.environ:
        env.update(GIT_COMMITTER_NAME=name or _ENV["GIT_COMMITTER_NAME"], GIT_COMMITTER_EMAIL=email)
    if author:
        user = name or os.environ.get("USER", "")  # the default actor, as user_name() has it
        own = bool(email) and normalize(author) == normalize(user)[:NAME_MAX]
        env.update(
            GIT_AUTHOR_NAME=author,
            GIT_AUTHOR_EMAIL=email if own else f"{author}@modelworks.local",
        )
    elif email and "GIT_AUTHOR_EMAIL" not in os.environ:
        env.update(GIT_AUTHOR_NAME=name or _ENV["GIT_AUTHOR_NAME"], GIT_AUTHOR_EMAIL=email)
    return env


def show(repo: Path, ref: str, path: str) -> str | None:
    """The content of `path` at `ref`, or None when it does not exist there."""
    proc = subprocess.run(["git", "-C", str(repo), "show", f"{ref}:{path}"], capture_output=True)
    return proc.stdout.decode() if proc.returncode == 0 else None


def ls_files(repo: Path, ref: str, prefix: str) -> list[str]:
    """Paths under `prefix` in the tree of `ref`."""
    out = git(repo, "ls-tree", "-r", "--name-only", ref, "--", prefix, check=False)
    return [line for line in out.splitlines() if line]


def cat_files(repo: Path, ref: str, paths: Sequence[str]) -> dict[str, str]:
    """Contents of many files at `ref` in one `git cat-file --batch` call."""
    if not paths:
        return {}
    request = "".join(f"{ref}:{p}\n" for p in paths).encode()
    out = subprocess.run(
        ["git", "-C", str(repo), "cat-file", "--batch"],
        input=request,
        capture_output=True,
        check=True,
    ).stdout
    result: dict[str, str] = {}
    pos = 0
    for p in paths:
        nl = out.index(b"\n", pos)
        header = out[pos:nl].split()
        pos = nl + 1
        if len(header) < 3 or header[1] == b"missing":
            continue
        size = int(header[2])
        result[p] = out[pos : pos + size].decode()
        pos += size + 1
    return result


def user_name(repo: Path) -> str:
    """The git user name (the default actor of `--as`), or the login name."""
    name = git(repo, "config", "user.name", check=False).strip()
    return name or os.environ.get("USER", "unknown")
