"""`mw data add`: version a data file DVC-style and bump the specs that use it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from modelworks import _git
from modelworks.data import s3
from modelworks.data.dirs import read_manifest, store_folder
from modelworks.data.dvc import (
    cache_path,
    file_md5,
    gitignore_add,
    read_pointer,
    store,
    write_pointer,
)
from modelworks.errors import DataError
from modelworks.spec import _read_raw, dump_spec, spec_files
from modelworks.workspace import Workspace


@dataclass
class DataVersion:
    dataset: str
    md5: str
    size: int
    pointer: Path
    previous: str | None
    bumped: list[str] = field(default_factory=list)
    commit: str | None = None
    remote: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "dataset": self.dataset,
            "md5": self.md5,
            "size": self.size,
            "pointer": str(self.pointer),
            "previous": self.previous,
            "bumped_specs": self.bumped,
            "commit": self.commit,
            "remote": self.remote,
        }


def _bump_specs(ws: Workspace, dataset: str, md5: str) -> list[Path]:
    """Set data_source.dvc_hash of every spec that reads `dataset` from this workspace.

    Returns every such spec, also those that already hold `md5`: a killed earlier run may
    have written them without committing, and this run's commit must take them along.
    """
    bumped = []
    for path in spec_files(ws.models_dir):
        try:
            raw = _read_raw(path)
        except Exception:
            continue  # a broken spec is reported by plan, not here
        ds = raw.get("data_source")
        if not isinstance(ds, dict) or ds.get("type") != "dvc" or ds.get("dataset") != dataset:
            continue
        if ds.get("repo_url") not in (None, "", "."):
            continue
        if ds.get("dvc_hash") != md5:
            ds["dvc_hash"] = md5
            dump_spec(raw, path)
        bumped.append(path)
    return bumped


def _changed(ws: Workspace, paths: list[Path], md5: str) -> list[Path]:
    """The specs whose last commit does not hold `md5` yet (all of them outside Git)."""
    if not _git.is_repo(ws.root) or _git.head(ws.root) is None:
        return paths
    return [p for p in paths if md5 not in (_git.show(ws.root, "HEAD", _rel(ws, p)) or "")]


def _rel(ws: Workspace, path: Path) -> str:
    return path.relative_to(ws.root).as_posix()


def _committed_md5(ws: Workspace, pointer: Path) -> str | None:
    """The dataset hash of the last commit's pointer (what this version replaces)."""
    if not _git.is_repo(ws.root) or _git.head(ws.root) is None:
        return read_pointer(pointer).md5 if pointer.exists() else None
    text = _git.show(ws.root, "HEAD", _rel(ws, pointer))
    try:
        doc = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        doc = None  # a broken committed pointer: this add replaces it
    outs = doc.get("outs") if isinstance(doc, dict) else None
    out = outs[0] if isinstance(outs, list) and outs else None
    md5 = out.get("md5") if isinstance(out, dict) else None
    return md5 if isinstance(md5, str) else None


def _check_folder(ws: Workspace, target: Path) -> None:
    """A folder dataset may be neither the workspace nor hold its state (cache, registry)."""
    if target == ws.root.resolve():
        raise DataError(f"{target}: is the workspace itself; add a folder inside it")
    state = Path(os.path.realpath(ws.state_dir))
    if state.is_relative_to(target) or target.is_relative_to(state):
        raise DataError(f"{target}: overlaps the workspace state {ws.state_dir}; add a data folder")


def _store_content(ws: Workspace, target: Path, pointer: Path) -> tuple[str, int, str | None]:
    """Put a file (or a folder: its files and `.dir` manifest) into the cache and an S3
    data.remote, then write its pointer; (md5, size, remote URL)."""
    if target.is_dir():
        v = store_folder(ws.cache_dir, target, ws.settings.data.max_files)
        remote = _push_folder(ws, v.md5)
        write_pointer(pointer, v.md5, v.size, target.name, nfiles=v.nfiles)
        return v.md5, v.size, remote
    md5 = file_md5(target)
    size = target.stat().st_size
    store(ws.cache_dir, target, md5)
    remote = push_remote(ws, target, md5)  # before the pointer: a failed push changes nothing
    write_pointer(pointer, md5, size, target.name)
    return md5, size, remote


def _push_folder(ws: Workspace, digest: str) -> str | None:
    """Push a folder's files, then its manifest (so a listed manifest's files are there)."""
    if not s3.is_s3_url(ws.settings.data.remote):
        return None
    manifest = cache_path(ws.cache_dir, digest)
    for _, md5 in read_manifest(manifest, digest, ws.settings.data.max_files):
        push_remote(ws, cache_path(ws.cache_dir, md5), md5)
    return push_remote(ws, manifest, digest)


def push_remote(ws: Workspace, source: Path, md5: str) -> str | None:
    """Push the content to an S3 data.remote (in DVC's layout); its URL, or None without one."""
    remote = ws.settings.data.remote
    if not s3.is_s3_url(remote):
        return None
    return s3.push(s3.remote_endpoint(ws.settings.data), str(remote), source, md5)


def add(
    ws: Workspace,
    path: Path,
    *,
    update_specs: bool = True,
    commit: bool = True,
    actor: str | None = None,
) -> DataVersion:
    """Hash a data file (or folder) into the cache, write its .dvc pointer, bump specs, commit."""
    target = path if path.is_absolute() else Path(os.getcwd()) / path
    target = target.resolve()
    if not target.exists():
        raise DataError(f"{path}: does not exist")
    if not target.is_file() and not target.is_dir():
        raise DataError(f"{path}: not a file or a folder")
    try:
        dataset = target.relative_to(ws.root).as_posix()
    except ValueError:
        raise DataError(f"{path}: must be inside the workspace {ws.root}") from None
    if target.is_dir():
        _check_folder(ws, target)
    pointer = target.with_name(target.name + ".dvc")
    # A re-run after a kill repairs what the killed run left half done: the pointer may be
    # written (or committed) with some specs bumped and uncommitted, others not bumped yet.
    previous = _committed_md5(ws, pointer)
    md5, size, remote = _store_content(ws, target, pointer)
    gitignore = gitignore_add(target.parent, target.name)
    version = DataVersion(dataset, md5, size, pointer, previous, remote=remote)
    readers = _bump_specs(ws, dataset, md5) if update_specs else []
    bumped = _changed(ws, readers, md5)
    version.bumped = [str(p.relative_to(ws.root)) for p in bumped]
    if commit and _git.is_repo(ws.root):
        paths = [pointer, gitignore, *bumped]
        rel = [p.relative_to(ws.root) for p in paths]
        msg = f"data: {dataset} {(previous or 'new')[:8]} -> {md5[:8]}"
        if bumped:
            msg += f"\n\nbumps {len(bumped)} spec(s):\n" + "\n".join(
                f"- {p}" for p in version.bumped
            )
        version.commit = _git.commit(ws.root, rel, msg, author=actor)
    return version
