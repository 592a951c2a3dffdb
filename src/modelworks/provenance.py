"""Git is the source of truth: is each input of a model committed, and in which commit?

A plan asks every repository it reads once (`git status --porcelain -z`), not once per spec:

    models/a.json   clean      -> trained, lineage names HEAD (which holds exactly this blob)
    models/b.json   modified   -> "models/b.json: not committed (modified); commit it or
                                   pass --allow-dirty"
    pipelines/pl/   untracked  -> the same, for every model that uses the pipeline

With --allow-dirty those models train, and the version is marked dirty instead of naming a
commit that does not hold what was trained.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from modelworks.pipelines.catalog import PipelineRef, folder_files

_STATES = {"?": "untracked", "A": "staged, not committed", "D": "deleted", "R": "renamed"}


class RepoStatus:
    """One repository's working tree against its HEAD.

    The git commands start at once and are read when first needed, so a plan loads its specs
    while git stats the working tree.
    """

    def __init__(self, top: str) -> None:
        self.top = top
        self._procs = {
            "head": _start(top, "rev-parse", "--verify", "-q", "HEAD^{commit}"),
            "status": _start(top, "status", "--porcelain", "-z", "--untracked-files=all"),
            "tracked": _start(top, "ls-files", "-z"),
        }
        self._out: dict[str, bytes] = {}

    def _result(self, name: str) -> bytes:
        if name not in self._out:
            proc = self._procs[name]
            out, _err = proc.communicate()
            self._out[name] = out if proc.returncode == 0 else b""
        return self._out[name]

    def close(self) -> None:
        """Reap every git process (those nobody asked about too)."""
        for name in self._procs:
            self._result(name)

    @cached_property
    def head(self) -> str | None:
        return self._result("head").decode().strip() or None

    @cached_property
    def changes(self) -> dict[str, str]:
        """Repo-relative posix path -> "untracked", "modified", ... for what differs."""
        return parse_status(self._result("status"))

    @cached_property
    def tracked(self) -> set[str]:
        """Every path in the index."""
        return set(self._result("tracked").decode(errors="surrogateescape").split("\0")) - {""}


def _start(top: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["git", "-C", top, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )


def parse_status(out: bytes) -> dict[str, str]:
    """`git status --porcelain -z` as {path: state}; a rename's source is skipped."""
    changes: dict[str, str] = {}
    fields = out.decode(errors="surrogateescape").split("\0")
    i = 0
    while i < len(fields):
        entry = fields[i]
        i += 1
        if len(entry) < 4:
            continue
        xy, path = entry[:2], entry[3:]
        if "R" in xy or "C" in xy:
            i += 1  # the original path follows a rename or copy
        if "?" in xy:
            state = "untracked"
        elif "D" in xy:
            state = "deleted"
        elif "M" in xy or "T" in xy or "U" in xy:
            state = "modified"
        else:
            state = _STATES.get(xy[0], "modified")
        changes[path] = state
    return changes


@dataclass
class Provenance:
    """What is committed, for the files a plan reads; every answer is cached."""

    root: Path
    pipelines_dir: Path
    _tops: dict[str, str | None] = field(default_factory=dict)
    _repos: dict[str, RepoStatus] = field(default_factory=dict)
    _real: dict[str, str] = field(default_factory=dict)
    _folders: dict[str, list[str]] = field(default_factory=dict)
    _files: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    _pipes: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def _top(self, directory: str) -> str | None:
        if directory not in self._tops:
            parent = os.path.dirname(directory)
            if os.path.exists(os.path.join(directory, ".git")):
                self._tops[directory] = directory
            elif parent == directory:
                self._tops[directory] = None
            else:
                self._tops[directory] = self._top(parent)
        return self._tops[directory]

    def _locate(self, path: Path | str) -> tuple[RepoStatus | None, str]:
        """The repository holding `path` and the path relative to its top."""
        directory, name = os.path.split(str(path))
        if directory not in self._real:
            self._real[directory] = os.path.realpath(directory)
        real_dir = self._real[directory]
        top = self._top(real_dir)
        if top is None:
            return None, os.path.join(real_dir, name)
        if top not in self._repos:
            self._repos[top] = RepoStatus(top)
        full = os.path.join(real_dir, name)
        # Slicing, not os.path.relpath: a plan locates every spec and relpath is slow.
        rel = full[len(top) + 1 :] if full != top else ""
        if os.sep != "/":
            rel = rel.replace(os.sep, "/")
        return self._repos[top], rel

    def shown(self, path: Path | str) -> str:
        """A path as a message shows it: relative to the workspace when inside it."""
        rel = os.path.relpath(str(path), self.root)
        return str(path) if rel.startswith("..") else rel.replace(os.sep, "/")

    def close(self) -> None:
        """Wait for the git processes this plan started."""
        for repo in self._repos.values():
            repo.close()

    def prefetch(self, folder: Path) -> None:
        """Start reading the status of the repository holding `folder`."""
        self._locate(os.path.join(folder, "."))

    def file_state(self, path: str) -> tuple[str | None, str | None]:
        """(why the file is not the committed one or None, the commit holding it or None)."""
        if path not in self._files:
            self._files[path] = self._read_file(path)
        return self._files[path]

    def _read_file(self, path: str) -> tuple[str | None, str | None]:
        repo, rel = self._locate(path)
        if repo is None:
            return f"{self.shown(path)}: not committed (not in a git repository)", None
        state = repo.changes.get(rel)
        if state is None and repo.head is None:
            state = "no commit yet"
        if state is None and rel not in repo.tracked:
            state = "untracked"  # or git-ignored: either way not in HEAD
        if state is None:
            return None, repo.head
        return f"{self.shown(path)}: not committed ({state})", None

    def pipeline_problems(self, pipe: PipelineRef) -> list[str]:
        """Why the pipeline a model uses differs from HEAD; a recorded snapshot never does."""
        key = (pipe.name, pipe.version)
        if key not in self._pipes:
            current = pipe.source == self.pipelines_dir / pipe.name
            self._pipes[key] = self.folder_problems(pipe.source) if current else []
        return self._pipes[key]

    def folder_problems(self, folder: Path) -> list[str]:
        """Why a pipeline folder differs from HEAD: each untracked, modified or deleted file."""
        key = str(folder)
        if key not in self._folders:
            self._folders[key] = self._read_folder(folder)
        return self._folders[key]

    def _read_folder(self, folder: Path) -> list[str]:
        repo, rel = self._locate(folder)
        if repo is None:
            return [f"{self.shown(folder)}: not committed (not in a git repository)"]
        if repo.head is None:
            return [f"{self.shown(folder)}: not committed (no commit yet)"]
        prefix = rel.rstrip("/") + "/"
        tracked = repo.tracked
        problems = []
        for f in folder_files(folder):
            frel = prefix + f.relative_to(folder).as_posix()
            state = repo.changes.get(frel) or (None if frel in tracked else "untracked")
            if state:
                problems.append(f"{self.shown(f)}: not committed ({state})")
        for path, state in sorted(repo.changes.items()):
            if path.startswith(prefix) and state == "deleted":
                problems.append(
                    f"{self.shown(os.path.join(repo.top, path))}: deleted, not committed"
                )
        return problems
