"""A local OCI image layout store: one layout per repo, blobs shared by content address.

On disk (``root`` is the workspace's ``.mw/oci``)::

    root/blobs/sha256/<hex>              every blob, written once, atomically
    root/repos/<repo>/oci-layout         {"imageLayoutVersion": "1.0.0"}
    root/repos/<repo>/index.json         one entry per tag (org.opencontainers.image.ref.name)
    root/repos/<repo>/blobs -> ../../blobs   (relative symlink, deeper for "ns/model")

so ``skopeo inspect oci:root/repos/<repo>:<tag>`` reads any image. A ModelCar is one
uncompressed, deterministic tar layer holding the model folder under ``models/``, on top of
an optional shared base layer (artifacts.baselayer: busybox's sh, ln and sleep for KServe).

Durability: by default every blob and index.json is fsynced before it is renamed into place.
A batch writer (the line's workers) passes ``durable=False`` and its caller calls
``sync_store(root)`` once before it commits the registry rows that name the images: the
registry row is the commit point, and an image that a crash caught before the sync is never
trusted (``runs.worker.recover`` re-verifies every blob; a non-durable write re-checks a blob
already on disk instead of trusting its name).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from filelock import FileLock

from modelworks.artifacts.baselayer import IMAGE_ENV, ROLE_ANNOTATION
from modelworks.errors import ArtifactError, NotFoundError, VerificationError, did_you_mean

if TYPE_CHECKING:
    from modelworks.artifacts.baselayer import BaseLayer

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
MODELS_DIR = "models"

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPO_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"sha256:([a-f0-9]{64})")
_CHUNK = 1 << 20
_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class ImageRef:
    """A tagged image in the local store."""

    repo: str
    tag: str
    digest: str
    layout: Path

    @property
    def skopeo_ref(self) -> str:
        """The reference skopeo and other containers/image tools understand."""
        return f"oci:{self.layout}:{self.tag}"


def validate_repo(repo: str) -> str:
    """Return repo if it is a valid OCI repository name, else raise ArtifactError."""
    if len(repo) > 255 or not REPO_RE.fullmatch(repo):
        raise ArtifactError(
            f"invalid OCI repository name {repo!r}: expected lowercase letters and digits "
            "separated by '.', '_', '__' or '-', with '/' between path components"
        )
    return repo


def validate_tag(tag: str) -> str:
    """Return tag if it is a valid OCI tag, else raise ArtifactError."""
    if not TAG_RE.fullmatch(tag):
        raise ArtifactError(
            f"invalid OCI tag {tag!r}: expected up to 128 of [A-Za-z0-9._-], "
            "not starting with '.' or '-'"
        )
    return tag


def parse_digest(digest: str) -> str:
    """Return the hex part of a 'sha256:<hex>' digest, else raise ArtifactError."""
    match = DIGEST_RE.fullmatch(digest)
    if not match:
        raise ArtifactError(f"invalid digest {digest!r}: expected 'sha256:' and 64 hex digits")
    return match.group(1)


def canonical_json(data: Any) -> bytes:
    """Serialize data the same way every time (sorted keys, no whitespace)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.out.write(data)


class _HashingReader:
    """A read-only file object that hashes what is read, for one-pass verify-and-read."""

    def __init__(self, src: IO[bytes]) -> None:
        self.src = src
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def drain(self) -> str:
        """Read to the end and return the digest of everything read."""
        while self.read(_CHUNK):
            pass
        return f"sha256:{self.sha.hexdigest()}"


def _model_files(model_dir: Path) -> Iterator[tuple[str, Path | None]]:
    """Yield (relative posix path, file path or None for a directory) in sorted order."""
    entries = sorted(os.scandir(model_dir), key=lambda e: e.name)
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            yield entry.name, None
            for rel, sub in _model_files(path):
                yield f"{entry.name}/{rel}", sub
        elif entry.is_file(follow_symlinks=True):
            yield entry.name, path
        else:
            raise ArtifactError(
                f"cannot package {path}: only regular files and folders can go in a ModelCar"
            )


def _tar_info(name: str, size: int, is_dir: bool) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if is_dir:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.size = size
        info.mode = 0o644
    return info


def write_model_tar(model_dir: Path, out: IO[bytes]) -> None:
    """Write model_dir under models/ as a deterministic, uncompressed tar stream."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tar_info(MODELS_DIR, 0, True))
        for rel, path in _model_files(model_dir):
            name = f"{MODELS_DIR}/{rel}"
            if path is None:
                tar.addfile(_tar_info(name, 0, True))
                continue
            with path.open("rb") as f:
                tar.addfile(_tar_info(name, os.fstat(f.fileno()).st_size, False), f)


def model_tar_bytes(files: Mapping[str, bytes]) -> bytes:
    """The tar `write_model_tar` writes for a folder holding exactly `files` (posix paths)."""
    tree: dict[str, Any] = {}
    for name, data in files.items():
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ArtifactError(f"cannot package {name!r}: not a relative path in the model folder")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ArtifactError(f"cannot package {name!r}: {part!r} is a file")
        node[parts[-1]] = data
    out = [_tar_info(MODELS_DIR, 0, True).tobuf(tarfile.PAX_FORMAT)]

    def add(node: dict[str, Any], prefix: str) -> None:
        for key in sorted(node):
            value, name = node[key], f"{prefix}/{key}"
            if isinstance(value, dict):
                out.append(_tar_info(name, 0, True).tobuf(tarfile.PAX_FORMAT))
                add(value, name)
            else:
                out.append(_tar_info(name, len(value), False).tobuf(tarfile.PAX_FORMAT))
                out.append(bytes(value))
                if len(value) % tarfile.BLOCKSIZE:
                    out.append(tarfile.NUL * (tarfile.BLOCKSIZE - len(value) % tarfile.BLOCKSIZE))

    add(tree, MODELS_DIR)
    size = sum(map(len, out)) + 2 * tarfile.BLOCKSIZE  # the end-of-archive blocks
    # A stream tarfile pads the archive to a whole record; so does this.
    out.append(tarfile.NUL * (2 * tarfile.BLOCKSIZE + (-size) % tarfile.RECORDSIZE))
    return b"".join(out)


def _safe_member_path(member: tarfile.TarInfo) -> str | None:
    """Return the member's path below models/ ('' for models/ itself), or raise if unsafe."""
    name = member.name
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or ".." in parts:
        raise ArtifactError(f"refusing unsafe tar entry {name!r}: absolute or '..' path")
    if not (member.isfile() or member.isdir()):
        raise ArtifactError(f"refusing tar entry {name!r}: links and special files are not allowed")
    parts = [p for p in parts if p not in ("", ".")]
    if not parts or parts[0] != MODELS_DIR:
        return None
    return "/".join(parts[1:])


class OCIStore:
    """OCI image layouts per repo under root, sharing one content-addressed blob folder."""

    def __init__(self, root: Path, *, architecture: str = "amd64", os_name: str = "linux") -> None:
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.repos_dir = self.root / "repos"
        self.architecture = architecture
        self.os_name = os_name
        self._made_dirs = False

    # -- blobs ---------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Path of the blob with this digest (it may not exist)."""
        return self.blobs_dir / parse_digest(digest)

    def has_blob(self, digest: str) -> bool:
        """Whether the blob is in the store."""
        return self.blob_path(digest).is_file()

    def _ensure_dirs(self) -> None:
        if not self._made_dirs:
            self.blobs_dir.mkdir(parents=True, exist_ok=True)
            self.repos_dir.mkdir(parents=True, exist_ok=True)
            self._made_dirs = True

    def _temp_file(self) -> tuple[IO[bytes], Path]:
        self._ensure_dirs()
        fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.blobs_dir)
        os.fchmod(fd, 0o644)
        return os.fdopen(fd, "wb"), Path(name)

    def _commit_blob(self, f: IO[bytes], tmp: Path, digest: str, durable: bool = True) -> None:
        """fsync and move a finished temp file to its digest path, unless already there.

        Without `durable` there is no fsync (the caller syncs the batch), and a blob already
        at the path is re-checked first: a crash before an earlier batch's sync may have left
        it empty or short, and trusting its name would build on a lost blob.
        """
        try:
            final = self.blob_path(digest)
            if final.exists() and (durable or _blob_ok(final, digest)):
                f.close()
                tmp.unlink()
                return
            f.flush()
            if durable:
                os.fsync(f.fileno())
            f.close()
            os.replace(tmp, final)
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise

    def put_blob(self, data: bytes, *, durable: bool = True) -> str:
        """Store bytes as a blob and return its digest (`durable`: see the module doc)."""
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if self.has_blob(digest) and (durable or _blob_ok(self.blob_path(digest), digest)):
            return digest
        f, tmp = self._temp_file()
        try:
            f.write(data)
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
        self._commit_blob(f, tmp, digest, durable)
        return digest

    def _put_model_layer(self, model_dir: Path, durable: bool = True) -> tuple[str, int]:
        f, tmp = self._temp_file()
        writer = _HashingWriter(f)
        try:
            write_model_tar(model_dir, writer)  # type: ignore[arg-type]
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
        digest = f"sha256:{writer.sha.hexdigest()}"
        self._commit_blob(f, tmp, digest, durable)
        return digest, writer.size

    def read_blob(self, digest: str) -> bytes:
        """Bytes of a blob, checked against its digest."""
        path = self.blob_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise VerificationError(f"blob {digest} is missing from {self.blobs_dir}") from None
        actual = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if actual != digest:
            raise VerificationError(
                f"blob {digest} at {path} is corrupt: its content hashes to {actual}"
            )
        return data

    # -- images --------------------------------------------------------------

    def write_image(
        self,
        repo: str,
        tag: str,
        model_dir: Path,
        annotations: dict[str, str],
        base: BaseLayer | None = None,
        *,
        durable: bool = True,
    ) -> ImageRef:
        """Package model_dir as a ModelCar image tagged repo:tag and return its reference.

        With `base` (artifacts.baselayer.base_layer) the model layer goes on top of it.
        Without `durable`, nothing is fsynced: call `sync_store(self.root)` before recording it.
        """
        validate_repo(repo)
        validate_tag(tag)
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ArtifactError(f"cannot package {model_dir}: not a folder")
        try:
            layer_digest, layer_size = self._put_model_layer(model_dir, durable)
        except OSError as exc:
            raise ArtifactError(f"cannot package {model_dir} as {repo}:{tag}: {exc}") from None
        return self._image(repo, tag, layer_digest, layer_size, annotations, base, durable)

    def write_image_files(
        self,
        repo: str,
        tag: str,
        files: Mapping[str, bytes],
        annotations: dict[str, str],
        base: BaseLayer | None = None,
        *,
        durable: bool = True,
    ) -> ImageRef:
        """`write_image` of a model folder held in memory (relative posix path -> bytes).

        The image is the one `write_image` makes of a folder with these files. Without
        `durable`, nothing is fsynced: call `sync_store(self.root)` before recording it.
        """
        validate_repo(repo)
        validate_tag(tag)
        layer = model_tar_bytes(files)
        try:
            layer_digest = self.put_blob(layer, durable=durable)
        except OSError as exc:
            raise ArtifactError(f"cannot package {repo}:{tag}: {exc}") from None
        return self._image(repo, tag, layer_digest, len(layer), annotations, base, durable)

    def _image(
        self,
        repo: str,
        tag: str,
        layer_digest: str,
        layer_size: int,
        annotations: dict[str, str],
        base: BaseLayer | None,
        durable: bool,
    ) -> ImageRef:
        """Config and manifest over the model layer (on the base layer, if any), tagged."""
        layers: list[dict[str, Any]] = [
            {"mediaType": LAYER_TYPE, "digest": layer_digest, "size": layer_size}
        ]
        if base is not None:
            layers.insert(0, base.descriptor())
        config = self._config_bytes([str(ly["digest"]) for ly in layers], base is not None)
        config_digest = self.put_blob(config, durable=durable)
        manifest = build_manifest(
            {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config)},
            layers,
            annotations,
        )
        return self.tag_manifest(repo, tag, manifest, durable=durable)

    def _config_bytes(self, diff_ids: list[str], has_base: bool) -> bytes:
        # Uncompressed layers: each diff_id is the layer's digest.
        return canonical_json(
            {
                "architecture": self.architecture,
                "os": self.os_name,
                "config": {"Env": IMAGE_ENV} if has_base else {},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }
        )

    def tag_manifest(
        self, repo: str, tag: str, manifest: bytes, *, durable: bool = True
    ) -> ImageRef:
        """Store manifest bytes and point repo:tag at them (the index entry is written last)."""
        validate_repo(repo)
        validate_tag(tag)
        digest = self.put_blob(manifest, durable=durable)
        entry = {
            "mediaType": MANIFEST_TYPE,
            "digest": digest,
            "size": len(manifest),
            "annotations": {REF_NAME: tag},
        }
        layout = self._init_layout(repo)
        with index_lock(layout):
            if (layout / "index.json").is_file():
                index = self._read_index(repo)
            else:
                index = {"schemaVersion": 2, "manifests": []}
            index["manifests"] = [
                m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag
            ] + [entry]
            self._write_index(layout, index, durable)
        return ImageRef(repo=repo, tag=tag, digest=digest, layout=layout)

    # -- layouts -------------------------------------------------------------

    def layout(self, repo: str) -> Path:
        """The OCI image layout folder of repo (it may not exist yet)."""
        return self.repos_dir / validate_repo(repo)

    def _init_layout(self, repo: str) -> Path:
        layout = self.layout(repo)
        if (layout / "oci-layout").is_file() and (layout / "blobs").is_symlink():
            return layout
        self._ensure_dirs()
        layout.mkdir(parents=True, exist_ok=True)
        # No lock: each step is atomic and idempotent, so racing writers end in the same state.
        with contextlib.suppress(FileExistsError):
            os.symlink(os.path.relpath(self.root / "blobs", layout), layout / "blobs")
        if not (layout / "oci-layout").is_file():
            _atomic_write(layout / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}', sync=False)
        return layout

    def _read_index(self, repo: str) -> dict[str, Any]:
        path = self.layout(repo) / "index.json"
        try:
            data = path.read_bytes()
            # A first index.json a crash caught before its batch's sync can be empty; nothing
            # the registry recorded is in it (the sync comes before the record).
            index: dict[str, Any] = json.loads(data) if data else {"manifests": []}
        except FileNotFoundError:
            raise NotFoundError(f"no OCI repository {repo!r} in {self.repos_dir}") from None
        except ValueError as exc:
            raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(index.get("manifests"), list):
            raise ArtifactError(f"{path}: field 'manifests' must be a list")
        return index

    def _write_index(self, layout: Path, index: dict[str, Any], durable: bool = True) -> None:
        index["schemaVersion"] = 2
        index["mediaType"] = INDEX_TYPE
        data = json.dumps(index, separators=(",", ":")).encode()
        _atomic_write(layout / "index.json", data, sync=durable)

    def tags(self, repo: str) -> dict[str, str]:
        """Map each tag of repo to its manifest digest."""
        return {
            m["annotations"][REF_NAME]: m["digest"]
            for m in self._read_index(repo)["manifests"]
            if REF_NAME in m.get("annotations", {})
        }

    def repos(self) -> list[str]:
        """Names of all repos in the store, sorted."""
        if not self.repos_dir.is_dir():
            return []
        found = []
        for dirpath, _dirs, files in os.walk(self.repos_dir):
            if "index.json" in files:
                found.append(Path(dirpath).relative_to(self.repos_dir).as_posix())
        return sorted(found)

    def resolve(self, repo: str, tag: str) -> ImageRef:
        """Find repo:tag, or raise NotFoundError naming it."""
        validate_tag(tag)
        if not (self.layout(repo) / "index.json").is_file():
            hint = did_you_mean(repo, self.repos())
            raise NotFoundError(f"image '{repo}:{tag}' not found: no repository {repo!r}.{hint}")
        tags = self.tags(repo)
        if tag not in tags:
            known = ", ".join(sorted(tags)[:10]) or "none"
            hint = did_you_mean(tag, set(tags))
            raise NotFoundError(
                f"image '{repo}:{tag}' not found in {self.layout(repo)} (tags: {known}).{hint}"
            )
        return ImageRef(repo=repo, tag=tag, digest=tags[tag], layout=self.layout(repo))

    def clean_temp(self, older_than: float = 3600.0) -> int:
        """Remove temp files that crashed writers left behind; return how many were removed."""
        cutoff = time.time() - older_than
        removed = 0
        for folder in [self.blobs_dir, *(self.layout(r) for r in self.repos())]:
            for path in folder.glob(f"{_TMP_PREFIX}*") if folder.is_dir() else []:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed

    # -- reading -------------------------------------------------------------

    def manifest(self, digest: str) -> dict[str, Any]:
        """The image manifest with this digest, after checking its bytes' digest."""
        data = self.read_blob(digest)
        try:
            manifest: dict[str, Any] = json.loads(data)
        except ValueError as exc:
            raise VerificationError(f"manifest {digest} is not valid JSON: {exc}") from None
        if manifest.get("schemaVersion") != 2 or not isinstance(manifest.get("layers"), list):
            raise VerificationError(f"blob {digest} is not an OCI image manifest")
        return manifest

    def verify(self, digest: str) -> None:
        """Re-hash manifest, config and layers; raise VerificationError naming a bad blob."""
        manifest = self.manifest(digest)
        self._verify_descriptor(manifest["config"], f"config of manifest {digest}")
        for i, layer in enumerate(manifest["layers"]):
            self._verify_descriptor(layer, f"layer {i} of manifest {digest}")

    def _verify_descriptor(self, desc: dict[str, Any], what: str) -> None:
        path = self.blob_path(desc["digest"])
        try:
            with path.open("rb") as f:
                reader = _HashingReader(f)
                actual = reader.drain()
        except FileNotFoundError:
            raise VerificationError(f"blob {desc['digest']} ({what}) is missing") from None
        if actual != desc["digest"] or reader.size != desc.get("size", reader.size):
            raise VerificationError(
                f"blob {desc['digest']} ({what}) at {path} is corrupt: "
                f"content hashes to {actual} ({reader.size} bytes, expected {desc.get('size')})"
            )

    def _model_layer(self, digest: str) -> tuple[dict[str, Any], dict[str, Any]]:
        manifest = self.manifest(digest)
        layers = [
            ly
            for ly in manifest["layers"]
            if ly.get("mediaType") == LAYER_TYPE
            and (ly.get("annotations") or {}).get(ROLE_ANNOTATION) != "base"
        ]
        if len(layers) != 1:
            raise ArtifactError(
                f"image {digest} has {len(layers)} uncompressed tar model layers; "
                "a ModelCar has exactly one (besides its base layer)"
            )
        return manifest, layers[0]

    def read_file(self, digest: str, name: str) -> bytes:
        """Read models/<name> from the image without extracting the rest (verifies the layer)."""
        manifest, layer = self._model_layer(digest)
        self._verify_descriptor(manifest["config"], f"config of manifest {digest}")
        wanted = name.strip("/")
        found: bytes | None = None
        with self._open_layer(layer, digest) as (tar, reader):
            for member in tar:
                rel = _safe_member_path(member)
                if rel == wanted and member.isfile():
                    fileobj = tar.extractfile(member)
                    assert fileobj is not None
                    found = fileobj.read()
            self._check_read(reader, layer, digest)
        if found is None:
            raise NotFoundError(f"no file models/{wanted} in image {digest}")
        return found

    def extract(self, digest: str, dest: Path, *, exist_ok: bool = False) -> Path:
        """Verify the image, then extract models/* into dest atomically; return dest.

        The layer is hashed while it is unpacked into a temp folder next to dest, and the
        folder is renamed to dest only when the digest matches (one read of the layer).
        With exist_ok an existing dest (e.g. another process's extraction) is returned as is.
        """
        dest = Path(dest)
        if dest.exists():
            if exist_ok:
                return dest
            raise ArtifactError(f"cannot extract {digest} into {dest}: it already exists")
        manifest, layer = self._model_layer(digest)
        self._verify_descriptor(manifest["config"], f"config of manifest {digest}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=dest.parent))
        tmp.chmod(0o755)
        try:
            with self._open_layer(layer, digest) as (tar, reader):
                _extract_members(tar, tmp)
                self._check_read(reader, layer, digest)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if exist_ok and dest.is_dir():
                return dest
            raise
        return dest

    def _open_layer(self, layer: dict[str, Any], digest: str) -> _LayerReader:
        return _LayerReader(self.blob_path(layer["digest"]), f"layer of image {digest}")

    @staticmethod
    def _check_read(reader: _HashingReader, layer: dict[str, Any], digest: str) -> None:
        actual = reader.drain()
        if actual != layer["digest"] or reader.size != layer.get("size", reader.size):
            raise VerificationError(
                f"blob {layer['digest']} (layer of manifest {digest}) is corrupt: "
                f"content hashes to {actual} ({reader.size} bytes, expected {layer.get('size')})"
            )


class _LayerReader:
    """Context manager yielding a streaming tar reader over a hashed blob."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what

    def __enter__(self) -> tuple[tarfile.TarFile, _HashingReader]:
        try:
            self.file = self.path.open("rb")
        except FileNotFoundError:
            raise VerificationError(f"blob {self.path.name} ({self.what}) is missing") from None
        self.reader = _HashingReader(self.file)
        try:
            self.tar = tarfile.open(fileobj=self.reader, mode="r|")  # type: ignore[call-overload]
        except tarfile.TarError as exc:
            self.file.close()
            raise ArtifactError(f"{self.what} is not a valid tar: {exc}") from None
        return self.tar, self.reader

    def __exit__(self, *exc: object) -> None:
        self.tar.close()
        self.file.close()


def _extract_members(tar: tarfile.TarFile, dest: Path) -> None:
    try:
        for member in tar:
            rel = _safe_member_path(member)
            if not rel:
                continue
            target = dest / rel
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            with target.open("xb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
            target.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    except tarfile.TarError as exc:
        raise ArtifactError(f"cannot read image layer as tar: {exc}") from None
    except FileExistsError as exc:
        raise ArtifactError(f"refusing duplicate tar entry {exc.filename}") from None
    except OSError as exc:
        raise ArtifactError(f"cannot extract image layer into {dest}: {exc}") from None


def build_manifest(
    config: dict[str, Any], layers: list[dict[str, Any]], annotations: dict[str, str]
) -> bytes:
    """Serialize an OCI image manifest with the given descriptors and annotations."""
    for key, value in annotations.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ArtifactError(f"annotation {key!r}={value!r}: keys and values must be strings")
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": config,
        "layers": layers,
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return canonical_json(manifest)


@contextlib.contextmanager
def index_lock(layout: Path) -> Iterator[None]:
    """The layout's index.json lock: an flock of `.index.lock`, the one filelock's FileLock
    takes on Unix (`mw gc` untags under it), without its polling (a few µs, not 0.5 ms)."""
    try:
        import fcntl
    except ImportError:  # not Unix
        with FileLock(str(layout / ".index.lock")):
            yield
        return
    fd = os.open(layout / ".index.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _blob_ok(path: Path, digest: str) -> bool:
    """Whether the file at `path` holds exactly the blob `digest` names."""
    sha = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                sha.update(chunk)
    except OSError:
        return False
    return f"sha256:{sha.hexdigest()}" == digest


def sync_store(root: Path) -> None:
    """Make everything written under `root` durable: one syncfs(2) of its file system.

    The batch writer's commit step (`durable=False` writes): blobs, index.json files and
    their renames reach the disk before the registry records the images. Where syncfs is
    not available, sync(2) does the same for every file system.
    """
    root = Path(root)
    if not root.exists():
        return
    libc = _libc()
    if libc is not None:
        fd = os.open(root, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
            err = ctypes.get_errno()
            raise ArtifactError(f"cannot sync {root} to disk: {os.strerror(err)}")
        finally:
            os.close(fd)
    os.sync()


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syncfs.argtypes = [ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


def _atomic_write(path: Path, data: bytes, *, sync: bool = True) -> None:
    fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


__all__ = [
    "CONFIG_TYPE",
    "LAYER_TYPE",
    "MANIFEST_TYPE",
    "ImageRef",
    "OCIStore",
    "build_manifest",
    "canonical_json",
    "model_tar_bytes",
    "sync_store",
    "validate_repo",
    "validate_tag",
]
