"""Revoked signing keys: a committed list that makes a public key stop verifying.

``keys/revoked.json`` (beside the public signing key) lists revoked keys by fingerprint::

    {"revoked": [{"id": "3f2a9c01b7de", "fingerprint": "sha256:3f2a…", "at": "…",
                  "by": "alice", "reason": "laptop lost"}]}

The list is read from the working tree *and* from every version of the file in Git
history, so deleting it (or `.mw/`) does not un-revoke a key: once revoked, always revoked.
A key's ID is the first 12 hex digits of its fingerprint, as `mw keys list` shows it.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelworks.errors import ConfigError, ConflictError, NotFoundError

if TYPE_CHECKING:
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

REVOKED_FILE = "revoked.json"
ID_LENGTH = 12
CACHE_SECONDS = 5.0
_CACHE: dict[str, tuple[tuple[int, int] | None, float, dict[str, dict[str, Any]]]] = {}


def key_id(fingerprint: str) -> str:
    """The short ID of a key: the first 12 hex digits of its sha256 fingerprint."""
    return fingerprint.removeprefix("sha256:")[:ID_LENGTH]


def revoked_path(ws: Workspace) -> Path:
    """keys/revoked.json, beside the committed public signing key."""
    return ws.path(ws.settings.signing.public_key).parent / REVOKED_FILE


def revoked_keys(ws: Workspace) -> dict[str, dict[str, Any]]:
    """Every revoked key, by fingerprint: the working-tree list plus every committed version.

    The server checks this on every model load, so the answer is kept for CACHE_SECONDS
    (and until the working-tree file changes): a revocation made by another process takes
    effect within that time, one made by this process at once.
    """
    path = revoked_path(ws)
    try:
        stat = path.stat()
        mark: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        mark = None
    key = str(ws.root.resolve())
    cached = _CACHE.get(key)
    now = time.monotonic()
    if cached is not None and cached[0] == mark and now - cached[1] < CACHE_SECONDS:
        return cached[2]
    found = _read_revoked(ws, path)
    _CACHE[key] = (mark, now, found)
    return found


def _read_revoked(ws: Workspace, path: Path) -> dict[str, dict[str, Any]]:
    from modelworks import _git

    texts: list[tuple[str, str]] = []
    if path.is_file():
        texts.append((str(path), path.read_text()))
    if _git.is_repo(ws.root) and ws.contains(path):
        rel = path.resolve().relative_to(ws.root.resolve()).as_posix()
        out = _git.git(ws.root, "log", "--format=%H", "--", rel, check=False)
        commits = [c for c in out.split() if c]
        for c in commits:  # a handful: the file changes once per revocation
            text = _git.show(ws.root, c, rel)
            if text is not None:
                texts.append((f"{rel} at {c[:10]}", text))
    found: dict[str, dict[str, Any]] = {}
    for where, text in reversed(texts):  # oldest first: the first revocation wins
        try:
            entries = _entries(where, text)
        except ConfigError:
            if where == str(path):
                raise  # the working-tree file: fix it
            continue  # a bad old commit cannot un-revoke what other versions list
        for entry in entries:
            found.setdefault(entry["fingerprint"], entry)
    return found


def _entries(where: str, text: str) -> list[dict[str, Any]]:
    try:
        doc = json.loads(text)
        entries = doc["revoked"]
        if not isinstance(entries, list):
            raise TypeError("'revoked' is not a list")
        return [
            {**e, "fingerprint": str(e["fingerprint"]), "id": key_id(str(e["fingerprint"]))}
            for e in entries
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{where}: unreadable revocation list ({exc}); expected "
            '{"revoked": [{"fingerprint": "sha256:…", ...}]}'
        ) from None


def find_key(ws: Workspace, wanted: str) -> tuple[Path, str]:
    """The (public key path, fingerprint) whose ID or fingerprint is `wanted`."""
    from modelworks.security.keys import all_public_keys, fingerprint

    token = wanted.strip().lower().removeprefix("sha256:")
    keys = [(k, fingerprint(k)) for k in all_public_keys(ws)]
    if len(token) >= ID_LENGTH:
        hits = [(k, fp) for k, fp in keys if fp.removeprefix("sha256:").startswith(token)]
        if len(hits) == 1:
            return hits[0]
    known = ", ".join(key_id(fp) for _k, fp in keys) or "none"
    raise NotFoundError(
        f"no signing key with ID {wanted!r} (known keys: {known}); use an ID from `mw keys list`"
    )


def revoke_key(
    ws: Workspace, store: Store, wanted: str, *, actor: str, reason: str = ""
) -> dict[str, Any]:
    """Add a public key to keys/revoked.json and commit it; refuse the current signing key."""
    from modelworks import _git
    from modelworks.registry import audit
    from modelworks.security.keys import fingerprint, signing_keys

    path, fp = find_key(ws, wanted)
    if fp == fingerprint(signing_keys(ws)[1]):
        raise ConflictError(
            f"key {key_id(fp)} is the current signing key: rotate first "
            f"(`mw keys rotate`), then `mw keys revoke {key_id(fp)}`"
        )
    if fp in revoked_keys(ws):
        raise ConflictError(f"key {key_id(fp)} is already revoked (see `mw keys list`)")
    entry = {
        "id": key_id(fp),
        "fingerprint": fp,
        "public_key": ws.show(path),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "by": actor,
        "reason": reason,
    }
    target = revoked_path(ws)
    current = _entries(str(target), target.read_text()) if target.is_file() else []
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps({"revoked": [*current, entry]}, indent=2) + "\n")
    tmp.replace(target)
    _CACHE.clear()
    commit = None
    if _git.is_repo(ws.root) and ws.contains(target):
        msg = f"mw keys revoke {entry['id']}" + (f": {reason}" if reason else "")
        commit = _git.commit(ws.root, [ws.show(target)], msg, author=actor)
    audit.record(
        store,
        [
            audit.event(
                "key.revoked",
                f"signing-key:{entry['id']}",
                actor=actor,
                after={**entry, "commit": commit},
            )
        ],
    )
    return {**entry, "commit": commit}
