"""A cache of parsed spec files, keyed by their Git blob ids, so a plan of an unchanged fleet
reads one file instead of 9,000.

`.mw/spec-cache.json` maps each spec (path relative to models/) to [blob id, its text]. A spec
is taken from the cache only when all of these hold:

- the index holds it as a plain file (`git ls-files -s -v`: tag H, mode 100644/100755, stage 0;
  not assume-unchanged or skip-worktree, whose working copy git no longer watches),
- its working copy is the index's (not listed by `git diff-files`), and
- the cached entry names that same blob id, and its text hashes to it (so a damaged or edited
  entry can never pass for the committed file).

Everything else (uncommitted edits, untracked files, another checkout's blobs, no Git at all)
is read from disk, and an entry is written only for bytes that hash to the index's blob id.
The file carries the sha256 of its body and a stamp of the code that validates specs: a
corrupt, truncated or foreign cache, or one written by other validation code, is ignored and
rewritten. Entries are parsed and validated again (in one call), never trusted as objects;
what is saved is the reading of 9,000 files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from modelworks.spec import LoadedSpec, ModelSpec, load_spec, read_spec_bytes

CACHE_FILE = "spec-cache.json"
FORMAT = 1
Entries = dict[str, list[Any]]


def stamp() -> str:
    """The validation code's identity: a change to it invalidates every entry."""
    import pydantic

    from modelworks import names, spec

    digest = hashlib.sha256(f"{FORMAT} {pydantic.VERSION}".encode())
    for module in (spec, names):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()


def blob_id(data: bytes, length: int = 40) -> str:
    """Git's object id of a blob holding `data` (sha1, or sha256 in a sha256 repository)."""
    algo = hashlib.sha1 if length == 40 else hashlib.sha256
    return algo(b"blob %d\0" % len(data) + data).hexdigest()


def _git(models_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["git", *args],
        cwd=models_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


def clean_blobs(models_dir: Path) -> dict[str, str]:
    """{path relative to models_dir: blob id} of the specs whose working copy is the index's."""
    if not models_dir.is_dir():
        return {}
    try:
        listing = _git(models_dir, "ls-files", "-s", "-v", "-z", "--", ".")
        changed = _git(models_dir, "diff-files", "--name-only", "-z", "--relative", "--", ".")
    except OSError:  # no git on PATH: nothing is known to be committed
        return {}
    out, _ = listing.communicate()
    dirty, _ = changed.communicate()
    if listing.returncode != 0 or changed.returncode != 0:
        return {}
    blobs = {}
    for entry in out.decode(errors="surrogateescape").split("\0"):
        meta, _, path = entry.partition("\t")
        parts = meta.split(" ")
        tracked = len(parts) == 4 and parts[0] == "H" and parts[1] in ("100644", "100755")
        if tracked and parts[3] == "0":
            blobs[path] = parts[2]
    for path in dirty.decode(errors="surrogateescape").split("\0"):
        blobs.pop(path, None)
    return blobs


def read_cache(path: Path, models_dir: Path, code: str) -> Entries:
    """The cache's entries, or none when it is missing, corrupt or written for other code."""
    try:
        data = path.read_bytes()
        header_line, _, body = data.partition(b"\n")
        header = json.loads(header_line)
        if not isinstance(header, dict) or header.get("stamp") != code:
            return {}
        if header.get("models_dir") != str(models_dir):
            return {}
        if header.get("sha256") != hashlib.sha256(body).hexdigest():
            return {}
        entries = json.loads(body)
    except (OSError, ValueError):
        return {}
    if not isinstance(entries, dict):
        return {}
    return {
        k: v
        for k, v in entries.items()
        if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], str)
    }


def write_cache(path: Path, models_dir: Path, code: str, entries: Entries) -> None:
    """Replace the cache atomically; a workspace where .mw cannot be written just goes uncached."""
    try:
        body = json.dumps(entries, separators=(",", ":"), allow_nan=True).encode()
    except (TypeError, ValueError):
        return
    header = {"stamp": code, "models_dir": str(models_dir)}
    header["sha256"] = hashlib.sha256(body).hexdigest()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(json.dumps(header).encode() + b"\n" + body)
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _validate_all(raws: list[dict[str, Any]]) -> list[ModelSpec] | None:
    """Every cached spec validated in one call; None if any fails (then each is re-read)."""
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(list[ModelSpec]).validate_python(raws)
    except ValidationError:
        return None


def _read_fresh(path: Path, blob: str | None) -> tuple[LoadedSpec, str | None]:
    """The spec read from disk, and its text when those bytes are the index's blob."""
    try:
        data = path.read_bytes()
    except OSError:
        return load_spec(path), None
    item = read_spec_bytes(path, data)
    if blob is None or item.spec is None or path.suffix != ".json":
        return item, None
    if blob_id(data, len(blob)) != blob:
        return item, None
    try:
        return item, data.decode()
    except UnicodeDecodeError:
        return item, None


def _is_blob(entry: list[Any] | None, blob: str | None) -> bool:
    """True when a cache entry's text is, byte for byte, the blob `blob`."""
    if blob is None or entry is None or entry[0] != blob:
        return False
    return blob_id(entry[1].encode(), len(blob)) == blob  # else tampered or damaged


def _parse_all(texts: list[str]) -> list[Any]:
    """json.loads of each text, in one call: each is a committed spec that parsed as one
    JSON object when it was cached (its blob id proves the bytes are the same)."""
    try:
        parsed: list[Any] = json.loads("[" + ",".join(texts) + "]")
    except ValueError:
        parsed = []
    if len(parsed) == len(texts) and all(isinstance(p, dict) for p in parsed):
        return parsed
    return [None] * len(texts)  # cannot happen for honest entries: read every file instead


def load_cached(models_dir: Path, paths: list[Path], cache_dir: Path) -> list[LoadedSpec]:
    """load_spec of each path, unchanged specs taken from the cache (see the module docs)."""
    blobs = clean_blobs(models_dir)
    code = stamp()
    cache_path = cache_dir / CACHE_FILE
    cached = read_cache(cache_path, models_dir, code) if blobs else {}
    prefix = str(models_dir) + os.sep
    out: list[LoadedSpec | None] = []
    hits: list[tuple[int, Path, str]] = []
    kept: Entries = {}
    for path in paths:
        text = str(path)
        rel = text[len(prefix) :].replace(os.sep, "/") if text.startswith(prefix) else ""
        blob = blobs.get(rel)
        if _is_blob(cached.get(rel), blob):
            hits.append((len(out), path, rel))
            out.append(None)
            kept[rel] = cached[rel]
            continue
        item, content = _read_fresh(path, blob)
        out.append(item)
        if content is not None:
            kept[rel] = [blob, content]
    raws = _parse_all([kept[rel][1] for _, _, rel in hits])
    specs = _validate_all(raws) if hits and None not in raws else None
    for n, (i, path, rel) in enumerate(hits):
        if specs is None:  # entries that no longer validate: read the files, drop the entries
            out[i] = load_spec(path)
            kept.pop(rel, None)
        else:
            out[i] = LoadedSpec(path, specs[n], raw=raws[n])
    if blobs and (kept != cached or (hits and specs is None)):
        write_cache(cache_path, models_dir, code, kept)
    return [item for item in out if item is not None]
