"""Directory datasets as DVC 3 stores them: a `.dir` manifest plus one cache entry per file.

The manifest is JSON, a list of {"md5", "relpath"} sorted by relpath, written exactly as
`json.dumps(entries, sort_keys=True)`; its own md5 plus ".dir" is the dataset's version
(what `dvc add folder` puts in the pointer). A pipeline never sees the cache: it gets a
materialized folder, every file checked against its md5 and every relpath confined to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelworks.data.dvc import file_md5, store
from modelworks.errors import DataError

DIR_SUFFIX = ".dir"
_MD5 = re.compile(r"^[0-9a-f]{32}$")

Entries = list[tuple[str, str]]  # (relpath, md5), sorted by relpath


def is_dir_hash(digest: str) -> bool:
    return digest.endswith(DIR_SUFFIX)


def manifest_bytes(entries: Entries) -> bytes:
    """The manifest as DVC writes it (and hashes it)."""
    doc = [{"md5": md5, "relpath": rel} for rel, md5 in sorted(entries)]
    return json.dumps(doc, sort_keys=True).encode("utf-8")


def check_relpath(rel: object, where: str) -> str:
    """`rel` when it names a file inside the folder; DataError naming `where` otherwise."""
    if not isinstance(rel, str) or not rel:
        raise DataError(f"{where}: relpath must be a non-empty string, got {rel!r}")
    parts = rel.split("/")
    bad = rel.startswith("/") or "\\" in rel or "\0" in rel or re.match(r"^[A-Za-z]:", rel)
    if bad or any(p in ("", ".", "..") for p in parts):
        raise DataError(
            f"{where}: relpath {rel!r} leaves the folder; expected a relative path "
            "without '..', '.', empty parts or a leading '/'"
        )
    return rel


def parse_manifest(data: bytes, where: str, max_files: int) -> Entries:
    """The checked entries of a manifest's bytes; DataError naming `where` and the entry."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise DataError(f"{where}: not a DVC directory manifest (invalid JSON)") from None
    if not isinstance(doc, list):
        raise DataError(f"{where}: a DVC directory manifest must be a JSON list")
    if len(doc) > max_files:
        raise DataError(
            f"{where}: directory has {len(doc)} files, more than data.max_files "
            f"({max_files}); raise data.max_files in modelworks.yaml"
        )
    entries: Entries = []
    for i, item in enumerate(doc):
        at = f"{where}: entry {i}"
        if not isinstance(item, dict):
            raise DataError(f"{at}: expected an object with 'relpath' and 'md5'")
        rel = check_relpath(item.get("relpath"), at)
        md5 = item.get("md5")
        if not isinstance(md5, str) or not _MD5.match(md5):
            raise DataError(f"{at} ({rel}): md5 must be 32 hex digits, got {md5!r}")
        entries.append((rel, md5))
    names = [rel for rel, _ in entries]
    if len(set(names)) != len(names):
        raise DataError(f"{where}: a relpath is listed twice")
    prefixes = {"/".join(n.split("/")[:k]) for n in names for k in range(1, n.count("/") + 1)}
    clash = sorted(set(names) & prefixes)
    if clash:
        raise DataError(f"{where}: relpath {clash[0]!r} is both a file and a folder")
    return sorted(entries)


def read_manifest(path: Path, digest: str, max_files: int) -> Entries:
    """The entries of the manifest at `path`, whose md5 must be `digest` (without `.dir`)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read directory manifest: {exc.strerror}") from None
    actual = hashlib.md5(data).hexdigest()
    if actual + DIR_SUFFIX != digest:
        raise DataError(
            f"{path}: directory manifest has md5 {actual}.dir, expected {digest}; "
            "the cache entry is corrupt: delete it and run `mw data add` again"
        )
    return parse_manifest(data, str(path), max_files)


@dataclass(frozen=True)
class DirVersion:
    md5: str
    size: int
    nfiles: int


def folder_entries(folder: Path, max_files: int) -> list[tuple[str, Path]]:
    """(relpath, file) of every file under folder, sorted; links may not lead outside it."""
    real_root = os.path.realpath(folder)
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                raise DataError(f"{os.path.join(dirpath, d)}: symlinked folders are not versioned")
        for name in filenames:
            f = Path(dirpath) / name
            real = os.path.realpath(f)
            if not real.startswith(real_root + os.sep) or not os.path.isfile(real):
                raise DataError(f"{f}: a symlink to {real}, outside the folder {folder}")
            found.append((f.relative_to(folder).as_posix(), f))
            if len(found) > max_files:
                raise DataError(
                    f"{folder}: has more than data.max_files ({max_files}) files; "
                    "raise data.max_files in modelworks.yaml"
                )
    if not found:
        raise DataError(f"{folder}: the folder has no files to version")
    return sorted(found)


def folder_md5(folder: Path, max_files: int) -> str:
    """The `<md5>.dir` version the folder has now (nothing is stored)."""
    entries = [(rel, file_md5(f)) for rel, f in folder_entries(folder, max_files)]
    return hashlib.md5(manifest_bytes(entries)).hexdigest() + DIR_SUFFIX


def tracked_dir(path: Path, base: Path) -> Path | None:
    """The folder at or below `base` holding `path` that has a pointer (`<folder>.dvc`)."""
    for parent in path.parents:
        if parent.with_name(parent.name + ".dvc").is_file():
            return parent
        if parent == base or parent == parent.parent:
            return None
    return None


def store_folder(cache_dir: Path, folder: Path, max_files: int) -> DirVersion:
    """Put every file of folder and its `.dir` manifest into the cache (DVC 3 layout)."""
    files = folder_entries(folder, max_files)
    entries = [(rel, file_md5(f)) for rel, f in files]
    for (_, f), (_, md5) in zip(files, entries, strict=True):
        store(cache_dir, f, md5)
    data = manifest_bytes(entries)
    cache_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5(data).hexdigest() + DIR_SUFFIX
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-manifest-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        store(cache_dir, Path(tmp), digest)
    finally:
        os.unlink(tmp)
    return DirVersion(digest, sum(f.stat().st_size for _, f in files), len(files))


def materialize(
    manifest: Path,
    digest: str,
    find: Callable[[str], Path | None],
    dest_root: Path,
    max_files: int,
) -> Path:
    """A read-only folder laid out as the manifest says, each file checked by its md5.

    `find(md5)` gives the cached content of one file. The folder is built aside and renamed
    into place, so a failure leaves nothing behind; an existing folder is reused.
    """
    target = dest_root / digest.removesuffix(DIR_SUFFIX)
    if target.is_dir():
        return target
    entries = read_manifest(manifest, digest, max_files)
    dest_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest_root, prefix=".tmp-"))
    try:
        for rel, md5 in entries:
            _place(tmp, rel, md5, find, manifest)
        os.replace(tmp, target)
    except OSError as exc:
        if not target.is_dir():
            raise DataError(f"{manifest}: cannot lay out directory {digest}: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _place(tmp: Path, rel: str, md5: str, find: Callable[[str], Path | None], where: Path) -> None:
    src = find(md5)
    if src is None:
        raise DataError(f"{where}: file {rel!r} (md5 {md5}) is not in the cache")
    actual = file_md5(src)
    if actual != md5:
        raise DataError(
            f"{where}: file {rel!r} has md5 {actual} in the cache ({src}), the manifest says {md5}"
        )
    dest = tmp / rel
    if not os.path.realpath(dest).startswith(os.path.realpath(tmp) + os.sep):
        raise DataError(f"{where}: relpath {rel!r} leaves the folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)  # the cache file is read-only already
    except OSError:
        shutil.copyfile(src, dest)
        os.chmod(dest, 0o444)
