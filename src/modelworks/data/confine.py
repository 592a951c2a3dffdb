"""Nothing escapes the workspace: data paths, globs and pointers stay under allowed roots.

The allowed roots are the workspace and the folders listed in `data.roots`. A path is
checked after symlinks are resolved, so `data/x.csv -> /etc/passwd` is refused like
`/etc/passwd` itself. A glob is refused before any walking when the folder it starts from
is outside the roots (`/usr/**`), and it stops with an error past `data.max_files` files.
Errors name the path and never show the file's content.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from modelworks.errors import DataError

_MAGIC = ("*", "?", "[")


@dataclass(frozen=True)
class Roots:
    """The real (symlink-resolved) folders data may be read from."""

    workspace: Path
    extra: tuple[str, ...] = ()
    max_files: int = 10000

    @cached_property
    def real(self) -> tuple[str, ...]:
        return (os.path.realpath(self.workspace), *(os.path.realpath(r) for r in self.extra))

    def contains(self, real: str) -> bool:
        """True when the resolved path `real` is one of the roots or inside one."""
        return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.real)

    def describe(self) -> str:
        extra = f" or data.roots ({', '.join(self.extra)})" if self.extra else ""
        return f"the workspace {self.workspace}{extra}"

    def check(self, path: Path | str, what: str) -> str:
        """The resolved path; DataError naming `path` when it resolves outside the roots."""
        real = os.path.realpath(path)
        if not self.contains(real):
            via = f" (it resolves to {real})" if real != os.path.abspath(path) else ""
            raise DataError(
                f"{what} {str(path)!r} is outside {self.describe()}{via}; "
                "move the data inside, or add its folder to data.roots in modelworks.yaml"
            )
        return real


def glob_base(pattern: str) -> str:
    """The folder a glob starts walking from: its leading segments without wildcards."""
    parts = pattern.split(os.sep)
    fixed = []
    for part in parts:
        if any(c in part for c in _MAGIC):
            break
        fixed.append(part)
    else:
        return pattern
    return os.sep.join(fixed) or os.sep


def _too_many(roots: Roots, pattern: str) -> DataError:
    return DataError(
        f"local data source {pattern!r} matches more than {roots.max_files} files; "
        "narrow the pattern or raise data.max_files in modelworks.yaml"
    )


def _bounded(items: Iterator[str], roots: Roots, pattern: str) -> Iterator[str]:
    for count, item in enumerate(items, 1):
        if count > roots.max_files:
            raise _too_many(roots, pattern)
        yield item


def _files_under(folder: str) -> Iterator[str]:
    """Every entry below folder that may be a file; symlinked folders are not followed."""
    for dirpath, _dirnames, filenames in os.walk(folder):
        for f in filenames:
            yield os.path.join(dirpath, f)


def check_links(base: str, roots: Roots, pattern: str) -> None:
    """Before a `**` glob walks base: no symlinked folder below it leads outside or loops.

    glob follows symlinked folders, so one link to / would otherwise walk the whole machine.
    """
    budget = roots.max_files * 10
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # glob's ** skips them too
        budget -= len(dirnames) + len(filenames)
        if budget < 0:
            raise DataError(
                f"local data source {pattern!r} would walk more than {roots.max_files * 10} "
                "entries; narrow the pattern or raise data.max_files in modelworks.yaml"
            )
        for d in dirnames:
            link = os.path.join(dirpath, d)
            if os.path.islink(link):
                real = roots.check(link, "local data path")
                if (dirpath + os.sep).startswith(real.rstrip(os.sep) + os.sep):
                    raise DataError(f"local data path {link!r} is a symlink loop (to {real})")


def matched_files(root: Path, pattern: str, roots: Roots) -> list[Path]:
    """The files a local data source names, in the order the tree hash reads them."""
    full = os.path.normpath(pattern if os.path.isabs(pattern) else os.path.join(root, pattern))
    base = glob_base(full)
    roots.check(base, "local data path")
    if "**" in full and os.path.isdir(base):
        check_links(os.path.realpath(base), roots, pattern)
    matches = sorted(Path(p) for p in _bounded(glob.iglob(full, recursive=True), roots, pattern))
    files: list[Path] = []
    for m in matches:
        real = roots.check(m, "local data path")
        if os.path.isdir(real):
            under = (Path(p) for p in _bounded(_files_under(str(m)), roots, pattern))
            found = sorted(p for p in under if p.is_file())
            files.extend(found)
        elif os.path.isfile(real):
            files.append(m)
        if len(files) > roots.max_files:
            raise _too_many(roots, pattern)
    for f in files:
        roots.check(f, "local data file")
    return files


@dataclass(frozen=True)
class TenantRoots:
    """The data roots of one tenant: folders relative to the workspace (or `s3://bucket/...`
    prefixes and data repo URLs, matched as written)."""

    workspace: Path
    tenant: str
    roots: tuple[str, ...]

    @cached_property
    def real(self) -> tuple[str, ...]:
        local = [r for r in self.roots if "://" not in r]
        return tuple(os.path.realpath(os.path.join(self.workspace, r)) for r in local)

    def describe(self) -> str:
        return f"tenant {self.tenant!r} may read only {', '.join(self.roots) or 'nothing'}"

    def allows_path(self, path: str) -> bool:
        """True when `path` (absolute, or relative to the workspace) resolves inside a root."""
        real = os.path.realpath(os.path.join(self.workspace, path))
        return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.real)

    def allows_url(self, url: str) -> bool:
        """True when `url` (an s3:// location or a data repo URL) lies under a listed root."""
        remote = [r.rstrip("/") for r in self.roots if "://" in r]
        return any(url.rstrip("/") == r or url.startswith(r + "/") for r in remote)
