"""Deploy configs of the work tree checked through a stat cache.

An apply that retrains one model of 9,000 must still make sure every model's config in an
auto-deploy environment is the one its registered version asks for (a killed apply may have
registered versions it never deployed; someone may have edited a file). Parsing 9,000
config.yaml files for that takes seconds; this cache remembers, per file, its stat signature
(mtime_ns, size, inode) and a digest of the inputs its content was last found to match, so an
unchanged file costs one os.stat. A file whose signature moved is read again.

Like Git's index, an entry is trusted only when the file's mtime is older than the moment the
cache was written by a safe margin: a file modified within the same clock tick as a check
could otherwise keep its signature. Such "racy" entries are checked again on the next apply.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from modelworks.gitops.deploy import DeployConfig, read_worktree_configs

FORMAT = 1
RACY_NS = 2_000_000_000  # an entry is trusted once its file is 2 s older than the cache

Signature = tuple[int, int, int]


def signature(path: Path) -> Signature | None:
    """(mtime_ns, size, inode) of a file, or None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def read_config(repo: Path, env: str, model: str) -> DeployConfig | None:
    """The work tree's config of one model in `env` (its qualified name), or None when the
    model has none there; in either layout (a reference config is completed from the registry)."""
    return read_worktree_configs(repo, env, [model]).get(model)


def key_digest(parts: list[str]) -> str:
    """A short digest of everything a config's content is derived from."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


class ConfigCache:
    """Which config files were last seen matching which inputs; load, check, note, save."""

    def __init__(self, path: Path, repo: Path, salt: str = "") -> None:
        self.path, self.repo = path, repo
        self.header = {"format": FORMAT, "repo": str(repo), "salt": salt}
        self.entries: dict[str, list[Any]] = {}
        self.changed = False
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(doc, dict) and doc.get("header") == self.header:
            entries = doc.get("entries")
            self.entries = entries if isinstance(entries, dict) else {}

    def fresh(self, rel: str, digest: str) -> bool:
        """True when the file at `rel` is unchanged since it was found to match `digest`."""
        entry = self.entries.get(rel)
        if entry is None or entry[3] != digest:
            return False
        sig = signature(self.repo / rel)
        return sig is not None and tuple(entry[:3]) == sig

    def note(self, rel: str, digest: str) -> None:
        """Remember that the file at `rel` (as it is now) matches `digest`; racy files are
        left out, so the next check reads them again."""
        sig = signature(self.repo / rel)
        if sig is None or time.time_ns() - sig[0] < RACY_NS:
            if self.entries.pop(rel, None) is not None:
                self.changed = True
            return
        entry = [*sig, digest]
        if self.entries.get(rel) != entry:
            self.entries[rel] = entry
            self.changed = True

    def save(self) -> None:
        """Write the cache atomically if anything changed (losing it only costs a re-read)."""
        if not self.changed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"header": self.header, "entries": self.entries}))
        tmp.replace(self.path)
        self.changed = False
