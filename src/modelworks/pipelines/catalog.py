"""Pipeline versions: folder hashes, immutable content-addressed snapshots, version lookup."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from modelworks.errors import PipelineError, did_you_mean
from modelworks.names import is_name

VERSION_FILE = "version"
ENTRY_FILE = "pipeline.py"
_IGNORED_DIRS = {"__pycache__", ".ipynb_checkpoints"}


def folder_files(folder: Path) -> list[Path]:
    """The files that make up a pipeline, sorted, caches excluded."""
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED_DIRS)
        files += [Path(dirpath) / f for f in sorted(filenames) if not f.endswith(".pyc")]
    return files


def folder_hash(folder: Path) -> str:
    """sha256 over each file's relative path and content: the pipeline's identity."""
    h = hashlib.sha256()
    for f in folder_files(folder):
        h.update(f"{f.relative_to(folder).as_posix()}\0".encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def snapshot(folder: Path, digest: str, snapshots_dir: Path) -> Path:
    """Copy the folder to snapshots_dir/<hash> (atomic, idempotent) and return it."""
    target = snapshots_dir / digest
    if target.exists():
        return target
    snapshots_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=snapshots_dir, prefix=".tmp-"))
    try:
        for f in folder_files(folder):
            dest = tmp / f.relative_to(folder)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
        if folder_hash(tmp) != digest:
            raise PipelineError(f"{folder} changed while it was being snapshotted; run again")
        os.replace(tmp, target)
    except OSError:
        if target.exists():  # another process won the race with the same content
            shutil.rmtree(tmp, ignore_errors=True)
            return target
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass(frozen=True)
class PipelineRef:
    """A resolved pipeline version: where its code is and its content hash."""

    name: str
    version: str
    hash: str
    source: Path
    recorded: bool


@dataclass
class Catalog:
    """Resolves (pipeline, version) for plan and apply, enforcing version immutability."""

    pipelines_dir: Path
    snapshots_dir: Path
    recorded: dict[tuple[str, str], tuple[str, str]]  # (name, version) -> (hash, snapshot)
    _current: dict[str, tuple[str, str] | PipelineError] = field(default_factory=dict)
    _refs: dict[tuple[str, str], PipelineRef] = field(default_factory=dict)

    def current(self, name: str) -> tuple[str, str]:
        """(version, hash) of the pipeline folder as it is now; PipelineError if unusable."""
        if name not in self._current:
            try:
                self._current[name] = self._read_current(name)
            except PipelineError as exc:
                self._current[name] = exc
        found = self._current[name]
        if isinstance(found, PipelineError):
            raise found
        return found

    def _read_current(self, name: str) -> tuple[str, str]:
        if not is_name(name):
            raise PipelineError(
                f"pipeline name {name!r} is not valid: it must be a folder directly under "
                f"{self.pipelines_dir} (lower-case letters, digits, '.', '_', '-'; no '/')"
            )
        folder = self.pipelines_dir / name
        real, base = os.path.realpath(folder), os.path.realpath(self.pipelines_dir)
        if not real.startswith(base.rstrip(os.sep) + os.sep):
            raise PipelineError(
                f"pipeline {name!r}: {folder} resolves to {real}, outside {self.pipelines_dir}; "
                "pipeline code must live in the pipelines folder"
            )
        if not folder.is_dir():
            known = (
                [p.name for p in self.pipelines_dir.iterdir() if p.is_dir()]
                if self.pipelines_dir.is_dir()
                else []
            )
            raise PipelineError(
                f"pipeline {name!r} not found in {self.pipelines_dir}.{did_you_mean(name, known)}"
            )
        vfile = folder / VERSION_FILE
        if not vfile.exists():
            raise PipelineError(f"{vfile} is missing: a pipeline folder needs a version file")
        if not (folder / ENTRY_FILE).exists():
            raise PipelineError(f"{folder / ENTRY_FILE} is missing: it holds the pipeline's steps")
        for f in folder_files(folder):
            target = os.path.realpath(f)
            if not target.startswith(real + os.sep):
                raise PipelineError(
                    f"{f} resolves to {target}, outside {folder}: a pipeline's files must be "
                    "inside its folder"
                )
        version = vfile.read_text().strip()
        digest = folder_hash(folder)
        recorded = self.recorded.get((name, version))
        if recorded and recorded[0] != digest:
            raise PipelineError(
                f"pipelines/{name} changed since version {version} was first used "
                f"(hash {recorded[0][:12]} -> {digest[:12]}) "
                f"but {vfile.name} still says {version}: "
                "pipeline versions are immutable; bump the version file"
            )
        return version, digest

    def resolve(self, name: str, version: str) -> PipelineRef:
        """The code of `name` at `version`: the folder if current, else its recorded snapshot."""
        ref = self._refs.get((name, version))
        if ref is None:  # thousands of specs share a few pipeline versions
            ref = self._refs[(name, version)] = self._resolve(name, version)
        return ref

    def _resolve(self, name: str, version: str) -> PipelineRef:
        cur_version, cur_hash = self.current(name)
        if version == cur_version:
            recorded = (name, version) in self.recorded
            return PipelineRef(name, version, cur_hash, self.pipelines_dir / name, recorded)
        known = self.recorded.get((name, version))
        if known is None:
            raise PipelineError(
                f"pipeline {name!r} version {version!r} is unknown: pipelines/{name}/version "
                f"says {cur_version} and no snapshot of {version} was recorded"
            )
        return PipelineRef(name, version, known[0], Path(known[1]), True)
