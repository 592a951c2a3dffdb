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
from pathlib import Path

from modelworks.pipelines.catalog import folder_files

_STATES = {"?": "untracked", "A": "staged, not committed", "D": "deleted", "R": "renamed"}


@dataclass
class RepoStatus:
    """One repository's working tree against its HEAD."""

    top: str
    head: str | None
    changes: dict[str, str]  # repo-relative posix path -> "untracked", "modified", ...
    _tracked: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def read(cls, top: str) -> RepoStatus:
        head = _run(top, "rev-parse", "--verify", "-q", "HEAD^{commit}").decode().strip()
        out = _run(top, "status", "--porcelain", "-z", "--untracked-files=all")
        return cls(top, head or None, parse_status(out))

    def tracked(self, prefix: str) -> set[str]:
        """Paths under `prefix` in the index (one `git ls-files` per folder asked about)."""
        if prefix not in self._tracked:
            out = _run(self.top, "ls-files", "-z", "--", prefix or ".")
            self._tracked[prefix] = {p for p in out.decode().split("\0") if p}
        return self._tracked[prefix]

    def tracked_file(self, rel: str) -> bool:
        """True when `rel` is in the index (git-ignored files are not in status)."""
        folder = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
        return rel in self.tracked(folder)


def _run(top: str, *args: str) -> bytes:
    proc = subprocess.run(["git", "-C", top, *args], capture_output=True)
    return proc.stdout if proc.returncode == 0 else b""


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
    _tops: dict[str, str | None] = field(default_factory=dict)
    _repos: dict[str, RepoStatus] = field(default_factory=dict)
    _real: dict[str, str] = field(default_factory=dict)
    _folders: dict[str, list[str]] = field(default_factory=dict)

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
            self._repos[top] = RepoStatus.read(top)
        rel = os.path.relpath(os.path.join(real_dir, name), top).replace(os.sep, "/")
        return self._repos[top], rel

    def shown(self, path: Path | str) -> str:
        """A path as a message shows it: relative to the workspace when inside it."""
        rel = os.path.relpath(str(path), self.root)
        return str(path) if rel.startswith("..") else rel.replace(os.sep, "/")

    def file_problem(self, path: Path | str) -> str | None:
        """Why the file at `path` is not the committed one, or None when it is."""
        repo, rel = self._locate(path)
        if repo is None:
            return f"{self.shown(path)}: not committed (not in a git repository)"
        state = repo.changes.get(rel)
        if state is None and repo.head is None:
            state = "no commit yet"
        if state is None and not repo.tracked_file(rel):
            state = "untracked"
        return None if state is None else f"{self.shown(path)}: not committed ({state})"

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
        tracked = repo.tracked(prefix)
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

    def commit_of(self, path: Path | str) -> str | None:
        """HEAD of the repository holding `path` (which holds it, when it is clean)."""
        repo, _rel = self._locate(path)
        return repo.head if repo is not None else None
