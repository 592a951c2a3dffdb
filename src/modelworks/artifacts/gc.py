"""`mw gc`: remove what crashes and kill -9s leave behind and nothing references.

What goes (each only when older than ``gc.min_age`` seconds, so a writer racing gc keeps its
files):

- blobs in ``.mw/oci/blobs/sha256`` that no kept image manifest references;
- orphan images: tags in the store with no registry version row, written before the newest
  run was created (a run killed between packaging and recording is recovered by the next
  apply from its image, so an image newer than every run is kept);
- ``.mw/work/*`` folders of runs that are not running;
- ``.tmp-*`` files and folders in the data cache, the OCI store and the serving cache.

What never goes: any image a deployment names (``deploy/*/*/config.yaml`` at the deploy
repo's HEAD) or a registered version records, and every blob those images reference.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from filelock import FileLock

from modelworks import _git
from modelworks._deployrepo import REFERENCE, layout_of
from modelworks.artifacts.oci import DIGEST_RE, INDEX_TYPE, REF_NAME, OCIStore
from modelworks.errors import ArtifactError

if TYPE_CHECKING:
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Garbage:
    """One thing gc removes (or would remove)."""

    kind: str  # blob, image, work, temp
    path: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "bytes": self.bytes}


@dataclass
class GCReport:
    """What gc found and whether it was removed."""

    dry_run: bool
    items: list[Garbage] = field(default_factory=list)
    kept_images: int = 0

    @property
    def bytes(self) -> int:
        return sum(i.bytes for i in self.items)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "removed": [i.to_dict() for i in self.items],
            "bytes": self.bytes,
            "kept_images": self.kept_images,
        }


def _size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            total += (Path(dirpath) / name).lstat().st_size
    return total


def _old(path: Path, cutoff: float) -> bool:
    try:
        return path.lstat().st_mtime < cutoff
    except FileNotFoundError:
        return False


def deployed_digests(ws: Workspace) -> set[str]:
    """Every artifact digest a deploy/<env>/<model>/config.yaml names at the deploy repo's HEAD."""
    repo = ws.deploy_repo
    if not _git.is_repo(repo) or _git.head(repo) is None:
        return set()
    if layout_of(repo) == REFERENCE:  # digests are in the registry, not in the configs
        from modelworks.gitops.deploy import list_env

        envs = ws.settings.environments
        return {c.artifact_digest for e in envs for c in list_env(repo, e) if c.artifact_digest}
    paths = [p for p in _git.ls_files(repo, "HEAD", "deploy/") if p.endswith("/config.yaml")]
    found: set[str] = set()
    for path, text in _git.cat_files(repo, "HEAD", paths).items():
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ArtifactError(
                f"{repo / path}: not valid YAML at HEAD{where}; gc removes nothing while a "
                "deployment cannot be read (fix and commit the config)"
            ) from None
        digest = doc.get("artifact_digest") if isinstance(doc, dict) else None
        if isinstance(digest, str):
            found.add(digest)
    return found


def _registry_state(store: Store) -> tuple[set[tuple[str, str]], set[str], set[str], float | None]:
    """(OCI repository, version) rows, registered digests, active runs' versions, newest
    run's time. A tenant's model lives in `<namespace>/<model>`: its layout folder says which."""
    from sqlalchemy import func, select

    from modelworks.registry.fastread import layout_repo
    from modelworks.registry.models import Model, ModelVersion, Run

    with store.session() as s:
        found = s.execute(
            select(
                Model.name,
                ModelVersion.version,
                ModelVersion.artifact_digest,
                ModelVersion.oci_layout,
            ).join(Model, Model.id == ModelVersion.model_id)
        ).all()
        rows = [(layout_repo(lay) if lay else name, ver, d) for name, ver, d, lay in found]
        # A queued or running run may recover its packaged image (runs/worker.py recover()).
        active = Run.status.in_(("queued", "running"))
        running = {v for (v,) in s.execute(select(Run.version).where(active))}
        newest = s.execute(select(func.max(Run.created_at))).scalar()
    versions = {(name, version) for name, version, _ in rows}
    digests = {d for _, _, d in rows if d}
    return versions, digests, running, newest.timestamp() if newest is not None else None


def _reachable(oci: OCIStore, roots: set[str]) -> set[str]:
    """Hex names of every blob reachable from these manifest (or index) digests."""
    seen: set[str] = set()
    todo = [d for d in roots if DIGEST_RE.fullmatch(d)]
    while todo:
        digest = todo.pop()
        hexpart = digest.split(":", 1)[1]
        if hexpart in seen:
            continue
        seen.add(hexpart)
        try:
            doc = json.loads(oci.blob_path(digest).read_bytes())
        except (OSError, ValueError):
            continue  # missing or not JSON: a layer, or damage `mw verify` reports
        if not isinstance(doc, dict):
            continue
        children = [doc.get("config"), *(doc.get("layers") or [])]
        if doc.get("mediaType") == INDEX_TYPE or "manifests" in doc:
            children += list(doc.get("manifests") or [])
        for child in children:
            ref = child.get("digest") if isinstance(child, dict) else None
            if isinstance(ref, str) and DIGEST_RE.fullmatch(ref):
                todo.append(ref)
    return seen


def _images(oci: OCIStore) -> list[tuple[str, str, str]]:
    """(repo, tag, manifest digest) of every tagged image in the store."""
    found = []
    for repo in oci.repos():
        for tag, digest in oci.tags(repo).items():
            found.append((repo, tag, digest))
    return found


def _untag(oci: OCIStore, repo: str, tag: str) -> None:
    """Remove repo:tag from its index.json (under the store's index lock)."""
    layout = oci.layout(repo)
    with FileLock(str(layout / ".index.lock")):
        index = oci._read_index(repo)
        index["manifests"] = [
            m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag
        ]
        oci._write_index(layout, index)


def _temp_files(root: Path, cutoff: float) -> list[Path]:
    """`.tmp-*` files and folders under root (symlinks not followed)."""
    found: list[Path] = []
    if not root.is_dir():
        return found
    for dirpath, dirs, files in os.walk(root):
        for name in [*files, *dirs]:
            path = Path(dirpath) / name
            if name.startswith(TMP_PREFIX) and _old(path, cutoff):
                found.append(path)
        dirs[:] = [d for d in dirs if not d.startswith(TMP_PREFIX)]
    return found


def collect(ws: Workspace, store: Store, *, dry_run: bool = False) -> GCReport:
    """Find (and unless dry_run, remove) unreferenced blobs, orphan images, work and temp files."""
    cutoff = time.time() - ws.settings.gc.min_age
    report = GCReport(dry_run=dry_run)
    oci = OCIStore(ws.oci_dir)
    versions, registered, running, newest_run = _registry_state(store)
    protected = deployed_digests(ws) | registered
    kept: set[str] = set(protected)
    for repo, tag, digest in _images(oci):
        manifest = oci.blob_path(digest) if DIGEST_RE.fullmatch(digest) else None
        orphan = (
            (repo, tag) not in versions
            and digest not in protected
            and tag not in running
            and newest_run is not None
            and manifest is not None
            and manifest.exists()
            and manifest.stat().st_mtime < min(newest_run, cutoff)
        )
        if not orphan:
            kept.add(digest)
            report.kept_images += 1
            continue
        report.items.append(Garbage("image", f"{repo}:{tag} {digest}", 0))
        if not dry_run:
            _untag(oci, repo, tag)
    live = _reachable(oci, kept)
    if oci.blobs_dir.is_dir():
        for path in sorted(oci.blobs_dir.iterdir()):
            if path.name.startswith(TMP_PREFIX) or path.name in live:
                continue
            if path.is_file() and _old(path, cutoff):
                report.items.append(Garbage("blob", ws.show(path), path.stat().st_size))
    work = ws.state_dir / "work"
    if work.is_dir():
        for path in sorted(work.iterdir()):
            if any(path.name.startswith(f"{v}-") for v in running) or not _old(path, cutoff):
                continue
            report.items.append(Garbage("work", ws.show(path), _size(path)))
    for root in (ws.cache_dir, ws.oci_dir, ws.state_dir / "serving-cache"):
        for path in _temp_files(root, cutoff):
            report.items.append(Garbage("temp", ws.show(path), _size(path)))
    if not dry_run:
        for item in report.items:
            if item.kind != "image":
                _remove(ws.path(item.path))
    return report


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


__all__ = ["GCReport", "Garbage", "collect", "deployed_digests"]
