"""DVC compatibility: md5 content hashes, the DVC 3 cache layout and .dvc pointer files."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from modelworks.errors import DataError

CHUNK = 1 << 20
# A file's md5, or a directory's: the md5 of its `.dir` manifest (see modelworks.data.dirs).
HASH_PATTERN = r"^[0-9a-f]{32}(\.dir)?$"


def file_md5(path: Path) -> str:
    """The md5 of a file's content, as DVC 3 computes it for `hash: md5`."""
    h = hashlib.md5()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise DataError(f"{path}: cannot read data file: {exc.strerror}") from None
    return h.hexdigest()


def cache_path(cache_dir: Path, md5: str) -> Path:
    """Where DVC 3 keeps content with this md5: files/md5/<2 hex>/<30 hex>."""
    return cache_dir / "files" / "md5" / md5[:2] / md5[2:]


def store(cache_dir: Path, source: Path, md5: str) -> Path:
    """Copy `source` into the cache under its md5 (atomic, idempotent); return the cache path."""
    target = cache_path(cache_dir, md5)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o444)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@dataclass(frozen=True)
class Pointer:
    """The single output of a .dvc pointer file."""

    md5: str
    size: int
    path: str


def read_pointer(pointer: Path) -> Pointer:
    """Parse a DVC pointer file; DataError names the file and what is wrong."""
    try:
        # The C loader when PyYAML has it: a plan reads one pointer per dataset (hundreds).
        doc = yaml.load(pointer.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError:
        raise DataError(f"{pointer}: pointer file not found; run `mw data add` first") from None
    except OSError as exc:
        raise DataError(f"{pointer}: not a readable DVC pointer file: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        # Only where, never what: the "pointer" may be any file and its lines are not ours to show.
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise DataError(f"{pointer}: not a valid DVC pointer file{where}") from None
    outs = doc.get("outs") if isinstance(doc, dict) else None
    if not outs or not isinstance(outs, list) or not isinstance(outs[0], dict):
        raise DataError(f"{pointer}: expected an 'outs' list with one entry")
    out = outs[0]
    md5 = str(out.get("md5", ""))
    if not re.match(HASH_PATTERN, md5):
        raise DataError(
            f"{pointer}: field 'outs[0].md5' must be a 32-hex md5 (a folder's ending in .dir), "
            f"got {md5!r}"
        )
    return Pointer(md5=md5, size=int(out.get("size", 0)), path=str(out.get("path", "")))


def write_pointer(pointer: Path, md5: str, size: int, path: str, nfiles: int | None = None) -> None:
    """Write a DVC 3 pointer file for one output (a folder's has `nfiles`, as DVC writes)."""
    out: dict[str, object] = {"md5": md5, "size": size}
    if nfiles is not None:
        out["nfiles"] = nfiles
    out.update(hash="md5", path=path)
    doc = {"outs": [out]}
    tmp = pointer.with_name(f".{pointer.name}.tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(pointer)


def gitignore_add(folder: Path, name: str) -> Path:
    """Ignore `/name` in folder/.gitignore the way `dvc add` does; return the .gitignore."""
    gi = folder / ".gitignore"
    entry = f"/{name}"
    lines = gi.read_text().splitlines() if gi.exists() else []
    if entry not in lines:
        lines.append(entry)
        gi.write_text("\n".join(lines) + "\n")
    return gi
