"""Resolve a spec's data source to a content hash and, for training, to the content itself."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from modelworks import _git
from modelworks.data import s3
from modelworks.data.confine import Roots, TenantRoots, glob_base
from modelworks.data.dirs import is_dir_hash, materialize
from modelworks.data.dvc import cache_path, read_pointer, store
from modelworks.data.hashing import HashCache, tree_hash
from modelworks.errors import DataError
from modelworks.spec import ModelSpec
from modelworks.workspace import Workspace

URL_PREFIXES = ("http://", "https://", "git@", "ssh://", "file://", "git://")


@dataclass(frozen=True)
class DataRef:
    """A resolved data version: its hash, and the file(s) holding the content."""

    kind: str
    hash: str
    dataset: str
    files: tuple[Path, ...] = ()


@dataclass
class DataResolver:
    """Resolves data sources for many specs, doing each repo, pointer and hash once."""

    ws: Workspace
    secret: s3.Secret | None = None  # unseals data_source.credentials (given by the caller)
    hashes: HashCache = field(init=False)
    roots: Roots = field(init=False)
    _repos: dict[str, Path] = field(default_factory=dict)
    _pointers: dict[tuple[str, str], str] = field(default_factory=dict)
    _found: dict[str, Path] = field(default_factory=dict)
    _local: dict[str, tuple[str, list[Path]]] = field(default_factory=dict)
    _s3: dict[object, tuple[s3.Endpoint, s3.Listing]] = field(default_factory=dict)
    fetched: int = 0  # S3 objects downloaded by this resolver

    def __post_init__(self) -> None:
        self.hashes = HashCache(self.ws.state_dir / "hashcache.json")
        data = self.ws.settings.data
        extra = [str(self.ws.path(r)) for r in data.roots]
        clones = self.ws.state_dir / "repos"
        if not Roots(self.ws.root).contains(os.path.realpath(clones)):
            extra.append(str(clones))  # a state_dir outside the workspace holds the clones
        self.roots = Roots(self.ws.root, tuple(extra), data.max_files)

    def repo_root(self, repo_url: str | None) -> Path:
        """The local folder of a data repo: the workspace, a local path, or a clone of a URL."""
        key = repo_url or ""
        if key in self._repos:
            return self._repos[key]
        if not repo_url or repo_url in (".", str(self.ws.root)):
            root = self.ws.root
        elif repo_url.startswith(URL_PREFIXES):
            root = self._clone(repo_url)
        else:
            root = self.ws.path(repo_url)
            self.roots.check(root, "data repo")
            if not root.is_dir():
                raise DataError(f"data repo {repo_url!r} is not a folder ({root})")
        self._repos[key] = root
        return root

    def _clone(self, url: str) -> Path:
        dest = self.ws.state_dir / "repos" / hashlib.sha1(url.encode()).hexdigest()[:16]
        if (dest / ".git").exists():
            _git.git(dest, "fetch", "-q", "--depth", "1", "origin", check=False)
            _git.git(dest, "reset", "-q", "--hard", "FETCH_HEAD", check=False)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            _git.git(dest.parent, "clone", "-q", "--depth", "1", url, str(dest))
        return dest

    def pointer_hash(self, repo: Path, dataset: str) -> str:
        key = (str(repo), dataset)  # no Path per spec: thousands of specs share a pointer
        if key not in self._pointers:
            pointer = repo / f"{dataset}.dvc"
            self.roots.check(pointer, "data pointer file")
            self._pointers[key] = read_pointer(pointer).md5
        return self._pointers[key]

    def pointer_of(self, spec: ModelSpec) -> str | None:
        """The .dvc pointer file a spec's data version is read from (None: pinned or local)."""
        ds = spec.data_source
        if ds.type != "dvc" or ds.dvc_hash:
            return None
        return os.path.join(self.repo_root(ds.repo_url), f"{ds.dataset}.dvc")

    def version(self, spec: ModelSpec) -> str:
        """The data hash that goes into the fingerprint (no content is read for dvc)."""
        ds = spec.data_source
        if ds.type == "dvc":
            if ds.dvc_hash:
                return ds.dvc_hash
            return self.pointer_hash(self.repo_root(ds.repo_url), str(ds.dataset))
        if ds.type == "local":
            return self._local_tree(str(ds.path or ds.dataset))[0]
        return self._s3_listing(spec)[1].version

    def _s3_listing(self, spec: ModelSpec) -> tuple[s3.Endpoint, s3.Listing]:
        ds = spec.data_source
        key = (ds.bucket, ds.prefix, ds.key, ds.pattern, ds.endpoint_url, ds.region, ds.credentials)
        if key not in self._s3:
            endpoint = s3.endpoint_for(ds, self.ws.settings.data, self.secret)
            listing = s3.list_source(
                endpoint,
                str(ds.bucket),
                prefix=ds.prefix,
                key=ds.key,
                pattern=ds.pattern,
                max_files=self.ws.settings.data.max_files,
            )
            self._s3[key] = (endpoint, listing)
        return self._s3[key]

    def _local_tree(self, pattern: str) -> tuple[str, list[Path]]:
        if pattern not in self._local:
            self._local[pattern] = tree_hash(self.ws.root, pattern, self.hashes, self.roots)
        return self._local[pattern]

    def caches(self, repo: Path) -> list[Path]:
        """Cache folders searched for content, nearest first."""
        found = [self.ws.cache_dir]
        if self.ws.settings.data.remote and not s3.is_s3_url(self.ws.settings.data.remote):
            found.append(self.ws.path(self.ws.settings.data.remote))
        found += [repo / ".dvc" / "cache", repo / ".mw" / "cache"]
        # The workspace is often its own data repo: list each folder once.
        unique: dict[Path, Path] = {}
        for cache in found:
            unique.setdefault(cache.resolve(), cache)
        return list(unique.values())

    def locate(self, md5: str, repo: Path) -> Path | None:
        """The cached content with this md5 (copied into the workspace cache if found elsewhere)."""
        if md5 in self._found:
            return self._found[md5]
        for i, cache in enumerate(self.caches(repo)):
            candidate = cache_path(cache, md5)
            if candidate.exists():
                hit = candidate if i == 0 else store(self.ws.cache_dir, candidate, md5)
                self._found[md5] = hit
                return hit
        remote = self.ws.settings.data.remote
        if remote and s3.is_s3_url(remote):
            pulled = s3.pull(
                s3.remote_endpoint(self.ws.settings.data), remote, md5, self.ws.cache_dir
            )
            if pulled is not None:
                self._found[md5] = pulled
            return pulled
        return None

    def resolve(self, spec: ModelSpec) -> DataRef:
        """Version and content of a spec's data; DataError when the content is not available."""
        ds = spec.data_source
        digest = self.version(spec)
        if ds.type == "local":
            return DataRef(
                "local",
                digest,
                str(ds.path or ds.dataset),
                tuple(self._local_tree(str(ds.path or ds.dataset))[1]),
            )
        if ds.type == "s3":
            return self._s3_fetch(spec)
        repo = self.repo_root(ds.repo_url)
        hit = self.locate(digest, repo)
        if hit is None:
            where = ", ".join(str(c) for c in self.caches(repo) if c.exists()) or str(
                self.ws.cache_dir
            )
            raise DataError(
                f"data hash {digest} of dataset {ds.dataset!r} is not in the cache ({where}); "
                f"run `mw data add {ds.dataset}` or configure data.remote"
            )
        if is_dir_hash(digest):
            hit = self._folder(hit, digest, repo)
        return DataRef("dvc", digest, str(ds.dataset), (hit,))

    def _folder(self, manifest: Path, digest: str, repo: Path) -> Path:
        """The read-only folder a directory dataset's manifest describes, laid out once."""
        dest = self.ws.state_dir / "dirs"
        return materialize(
            manifest, digest, lambda md5: self.locate(md5, repo), dest, self.roots.max_files
        )

    def _s3_fetch(self, spec: ModelSpec) -> DataRef:
        """The S3 source's content, fetched into the cache by version unless already there."""
        endpoint, listing = self._s3_listing(spec)
        self.roots.check(self.ws.cache_dir, "data cache")  # S3 itself is no local path
        files, count = s3.fetch(endpoint, listing, self.ws.cache_dir)
        self.fetched += count
        name = f"s3://{listing.bucket}/{spec.data_source.key or listing.base}"
        return DataRef("s3", listing.version, name, tuple(files))

    def save(self) -> None:
        self.hashes.save()


def owner_problem(spec: ModelSpec, data: DataResolver, roots: TenantRoots) -> str | None:
    """Why `spec` may not read its data as a spec of its tenant (None: it may): the field
    and what the tenant's data roots allow. Nothing is read or cloned to decide it."""
    ds = spec.data_source
    if ds.type == "s3":
        url = f"s3://{ds.bucket}/{ds.prefix or ''}"
        if roots.allows_url(url):
            return None
        return f"field 'data_source.bucket': {url} is outside its data roots ({roots.describe()})"
    if ds.type == "local":
        pattern = str(ds.path or ds.dataset)
        full = os.path.normpath(os.path.join(data.ws.root, pattern))
        if roots.allows_path(glob_base(full)):
            return None
        field = "data_source.path" if ds.path else "data_source.dataset"
        return f"field {field!r}: {pattern!r} is outside its data roots ({roots.describe()})"
    if ds.repo_url and ds.repo_url.startswith(URL_PREFIXES):
        if roots.allows_url(ds.repo_url):
            return None
        return (
            f"field 'data_source.repo_url': {ds.repo_url!r} is not a data root ({roots.describe()})"
        )
    base = data.ws.path(ds.repo_url) if ds.repo_url else data.ws.root
    if roots.allows_path(os.path.join(base, str(ds.dataset))):
        return None
    return (
        f"field 'data_source.dataset': {ds.dataset!r} is outside its data roots "
        f"({roots.describe()})"
    )
