"""Content hashes of local files and folders, cached by (path, size, mtime, inode)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from modelworks.data.confine import Roots, matched_files
from modelworks.data.dvc import file_md5
from modelworks.errors import DataError


class HashCache:
    """A persistent map from a file's stat identity to its md5: unchanged files are not re-read."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, list[object]] = {}
        self.dirty = False
        if path and path.exists():
            try:
                self.entries = json.loads(path.read_text())
            except (OSError, ValueError):
                self.entries = {}

    def md5(self, file: Path) -> str:
        """The md5 of `file`, from the cache when its size, mtime and inode are unchanged."""
        try:
            st = file.stat()
        except OSError as exc:
            raise DataError(f"{file}: cannot read data file: {exc.strerror}") from None
        key = str(file)
        ident = [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = self.entries.get(key)
        if hit is not None and hit[:3] == ident:
            return str(hit[3])
        digest = file_md5(file)
        self.entries[key] = [*ident, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.path and self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.entries))
            tmp.replace(self.path)
            self.dirty = False


def tree_hash(
    root: Path, pattern: str, cache: HashCache, roots: Roots | None = None
) -> tuple[str, list[Path]]:
    """A hash over every file matching `pattern` under root: names and content, sorted.

    Only files inside `roots` (default: root itself) are read; see modelworks.data.confine.
    """
    files = matched_files(root, pattern, roots or Roots(root))
    if not files:
        raise DataError(f"local data source {pattern!r} matches no file under {root}")
    h = hashlib.md5()
    for f in files:
        rel = os.path.relpath(f, root)
        h.update(f"{rel}\0{cache.md5(f)}\n".encode())
    return h.hexdigest(), files
