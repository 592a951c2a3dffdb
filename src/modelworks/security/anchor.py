"""The audit log's head, signed with the workspace key and committed to Git.

The hash chain (security/audit.py) shows any edit *inside* the log, but whoever can write
the database can cut its tail off, or rewrite the last rows and re-hash them. So the head
(seq and hash of the newest row) is kept in two places the database writer cannot quietly
rewrite:

    .mw/audit-anchor.json   signed; advanced by every audit write made through the CLI,
                            the server and the controller
    audit/anchor.json       signed and committed to Git by `mw audit verify` (and by
                            `mw keys rotate`, which re-signs both with the new key)

An anchor is ``{"v": 1, "kind": "local"|"git", "seq", "hash", "at", "key", "signature"}``:
an ECDSA P-256 / SHA-256 signature over the canonical JSON of the other fields, by the
signing key whose fingerprint is ``key``. The ``kind`` is signed too, so the committed
anchor cannot stand in for a deleted-and-truncated local one.

`mw audit verify` fails when an anchor is unsigned, badly signed, signed by an unknown or
revoked key, names a row whose hash differs (rewritten), or a seq past the end of the log
(truncated); and when the local anchor is missing although one was committed, or the
committed one was deleted from Git. A workspace with neither gets both on its first intact
`mw audit verify`; from then on a deleted anchor is a failure, not a fresh start.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelworks.errors import ConfigError

if TYPE_CHECKING:
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

LOCAL_FILE = "audit-anchor.json"
LEGACY_CHECKPOINT = "audit-checkpoint.json"  # unsigned; written before anchors existed
SIGNED = ("v", "kind", "seq", "hash", "at", "key")


@dataclass(frozen=True)
class AnchorProblem:
    """Why an anchor cannot be trusted, or what it shows about the log."""

    seq: int
    kind: str  # "anchor" | "edited" | "deleted"
    detail: str


def local_path(ws: Workspace) -> Path:
    """.mw/audit-anchor.json: the signed head, advanced on every audit write."""
    return ws.state_dir / LOCAL_FILE


def committed_path(ws: Workspace) -> str:
    """The workspace-relative path of the committed anchor (settings.audit.anchor_file)."""
    return Path(ws.settings.audit.anchor_file).as_posix()


# -- signing --------------------------------------------------------------------------


def sign(
    kind: str, seq: int, hash_: str, private_key: Path, at: str | None = None
) -> dict[str, Any]:
    """An anchor for (seq, hash) signed with the PEM EC private key at `private_key`."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = _load_private(private_key)
    doc: dict[str, Any] = {
        "v": 1,
        "kind": kind,
        "seq": seq,
        "hash": hash_,
        "at": at or datetime.now(UTC).isoformat(timespec="seconds"),
        "key": _fingerprint(key.public_key()),
    }
    signature = key.sign(_payload(doc), ec.ECDSA(hashes.SHA256()))
    return {**doc, "signature": base64.b64encode(signature).decode()}


def check_signature(
    doc: Mapping[str, Any], kind: str, trusted: Mapping[str, Path], revoked: Mapping[str, Any]
) -> str | None:
    """Why `doc` is not a valid `kind` anchor signed by a trusted key; None when it is."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from modelworks.security.revoked import key_id

    if not doc.get("signature"):
        return "is not signed"
    if doc.get("kind") != kind or not isinstance(doc.get("seq"), int):
        return f"is not a {kind} audit anchor (kind {doc.get('kind')!r})"
    fp = str(doc.get("key"))
    if fp in revoked:
        return f"is signed by revoked key {key_id(fp)}"
    if fp not in trusted:
        return f"is signed by key {key_id(fp)}, which is not a workspace signing key"
    public = serialization.load_pem_public_key(trusted[fp].read_bytes())
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return f"names key {key_id(fp)}, which is not an EC key"
    try:
        signature = base64.b64decode(str(doc["signature"]), validate=True)
        public.verify(signature, _payload(doc), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return f"has a bad signature (key {key_id(fp)}): it was rewritten"
    return None


def _payload(doc: Mapping[str, Any]) -> bytes:
    body = {name: doc.get(name) for name in SIGNED}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _load_private(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: cannot sign the audit anchor with it ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: not an EC private key; cannot sign the audit anchor")
    return key


def _fingerprint(public: Any) -> str:
    import hashlib

    from cryptography.hazmat.primitives import serialization

    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"sha256:{hashlib.sha256(der).hexdigest()}"


# -- reading and writing ---------------------------------------------------------------


def read_local(ws: Workspace) -> dict[str, Any] | None:
    """The local anchor document, or None when the file is absent."""
    path = local_path(ws)
    if not path.is_file():
        return None
    return _parse(str(path), path.read_text())


def read_committed(ws: Workspace) -> tuple[dict[str, Any] | None, str | None]:
    """(the anchor at HEAD or None, the commit that deleted it if it once existed)."""
    from modelworks import _git

    if not _git.is_repo(ws.root):
        return None, None
    rel = committed_path(ws)
    text = _git.show(ws.root, "HEAD", rel)
    if text is not None:
        return _parse(f"{rel} at HEAD", text), None
    last = _git.git(ws.root, "log", "-1", "--format=%H", "--", rel, check=False).strip()
    return None, last or None


def _parse(where: str, text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return {"_unreadable": f"{where}: not JSON ({exc})"}
    return doc if isinstance(doc, dict) else {"_unreadable": f"{where}: not a JSON object"}


def write_local(ws: Workspace, seq: int, hash_: str, *, only_forward: bool = True) -> bool:
    """Sign (seq, hash) into .mw/audit-anchor.json; False when the anchor is already past it."""
    from filelock import FileLock

    from modelworks.security.keys import signing_keys

    path = local_path(ws)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock", timeout=60):
        current = read_local(ws) if only_forward else None
        if current is not None and isinstance(current.get("seq"), int) and current["seq"] >= seq:
            return False
        _atomic_write(path, sign("local", seq, hash_, signing_keys(ws)[0]))
    return True


def write_committed(ws: Workspace, seq: int, hash_: str, message: str) -> str | None:
    """Sign (seq, hash) into the committed anchor file and commit it; the commit sha."""
    from modelworks import _git
    from modelworks.security.keys import signing_keys

    rel = committed_path(ws)
    _atomic_write(ws.root / rel, sign("git", seq, hash_, signing_keys(ws)[0]))
    return _git.commit(ws.root, [rel], message)


def _atomic_write(path: Path, doc: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


def can_sign(ws: Workspace) -> bool:
    """True when the workspace's signing private key is there to sign anchors with."""
    from modelworks.security.keys import signing_keys

    return signing_keys(ws)[0].is_file()


def open_store(ws: Workspace) -> Store:
    """The workspace's registry, with every audit write advancing the signed head."""
    from modelworks.registry.store import Store

    return Store(ws.registry_url, on_append=advancer(ws))


def advancer(ws: Workspace) -> Callable[[int, str], None]:
    """A hook for Store.on_append: moves the local anchor to each new head (best effort).

    A failed write leaves the anchor behind the log, which verify accepts: the log may be
    longer than its anchor, never shorter.
    """

    def advance(seq: int, hash_: str) -> None:
        if can_sign(ws):
            write_local(ws, seq, hash_)

    return advance


# -- checking -------------------------------------------------------------------------


def check(
    ws: Workspace, last_seq: int, hash_at: Callable[[int], str | None]
) -> tuple[list[AnchorProblem], dict[str, Any]]:
    """Every reason the anchors distrust the log, and what each anchor says (for --json)."""
    trusted, revoked = _keys(ws)
    local = read_local(ws)
    committed, deleted_in = read_committed(ws)
    rel, lpath = committed_path(ws), ws.show(local_path(ws))
    problems: list[AnchorProblem] = []
    judge = _Judge(trusted, revoked, last_seq, hash_at)
    if committed is not None:
        problems += judge(committed, "git", f"{rel} (committed)")
    elif deleted_in:
        problems.append(
            AnchorProblem(
                0,
                "anchor",
                f"{rel} was committed before but is gone from HEAD (last changed in "
                f"{deleted_in[:10]}): the audit anchor was deleted",
            )
        )
    if local is not None:
        problems += judge(local, "local", lpath)
    elif committed is not None or deleted_in:
        problems.append(
            AnchorProblem(
                0,
                "anchor",
                f"{lpath} is missing, but an audit anchor was committed to {rel}: the signed "
                "head was deleted, so a cut tail cannot be ruled out (on a new checkout of a "
                "shared registry, `mw audit verify --accept-head` anchors the current head)",
            )
        )
    else:
        problems += _legacy(ws, last_seq, hash_at)
    return problems, {"local": _summary(local), "committed": _summary(committed)}


@dataclass
class _Judge:
    trusted: Mapping[str, Path]
    revoked: Mapping[str, Any]
    last_seq: int
    hash_at: Callable[[int], str | None]

    def __call__(self, doc: Mapping[str, Any], kind: str, where: str) -> list[AnchorProblem]:
        if "_unreadable" in doc:
            return [AnchorProblem(0, "anchor", f"{doc['_unreadable']}: not a signed audit anchor")]
        reason = check_signature(doc, kind, self.trusted, self.revoked)
        raw = doc.get("seq")
        seq = raw if isinstance(raw, int) else 0
        if reason:
            detail = f"{where} {reason}; the log's head cannot be trusted"
            return [AnchorProblem(seq, "anchor", detail)]
        return _against_log(seq, str(doc.get("hash")), where, doc.get("at"), self)


def _against_log(seq: int, hash_: str, where: str, at: Any, judge: _Judge) -> list[AnchorProblem]:
    when = f"signed {at}" if at else "signed"
    if seq > judge.last_seq:
        gone = (
            f"row {seq} is"
            if seq == judge.last_seq + 1
            else f"rows {judge.last_seq + 1}..{seq} are"
        )
        return [
            AnchorProblem(
                judge.last_seq + 1,
                "deleted",
                f"the log ends at seq {judge.last_seq} but {where} ({when}) records its head at "
                f"seq {seq}: the log was truncated ({gone} gone)",
            )
        ]
    if judge.hash_at(seq) != hash_:
        return [
            AnchorProblem(
                seq,
                "edited",
                f"row {seq} differs from the head hash in {where} ({when}): rewritten and "
                "re-hashed",
            )
        ]
    return []


def _legacy(
    ws: Workspace, last_seq: int, hash_at: Callable[[int], str | None]
) -> list[AnchorProblem]:
    """The unsigned checkpoint older versions wrote: still honoured until a signed anchor exists."""
    path = ws.state_dir / LEGACY_CHECKPOINT
    if not path.is_file():
        return []
    try:
        mark = json.loads(path.read_text())
        seq, hash_ = int(mark["seq"]), str(mark["hash"])
    except (ValueError, KeyError, TypeError) as exc:
        return [AnchorProblem(0, "anchor", f"{path}: unreadable audit checkpoint ({exc})")]
    judge = _Judge({}, {}, last_seq, hash_at)
    return _against_log(seq, hash_, ws.show(path), mark.get("at"), judge)


def _keys(ws: Workspace) -> tuple[dict[str, Path], dict[str, Any]]:
    from modelworks.security.keys import all_public_keys, fingerprint
    from modelworks.security.revoked import revoked_keys

    try:
        keys = all_public_keys(ws)
    except ConfigError:
        keys = []
    return {fingerprint(k): k for k in keys}, revoked_keys(ws)


def _summary(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if doc is None or "_unreadable" in doc:
        return None
    return {k: doc.get(k) for k in ("seq", "hash", "at", "key")}


def settle(ws: Workspace, seq: int, hash_: str, *, force: bool = False) -> dict[str, Any]:
    """After an intact verify: anchor (seq, hash) locally and, when it moved, in Git."""
    from modelworks import _git

    if not can_sign(ws):
        return {"signed": False, "reason": "no signing private key to sign the anchor with"}
    write_local(ws, seq, hash_, only_forward=not force)
    (ws.state_dir / LEGACY_CHECKPOINT).unlink(missing_ok=True)
    commit = None
    if ws.settings.audit.commit_anchor and _git.is_repo(ws.root):
        committed, _deleted = read_committed(ws)
        behind = committed is None or not isinstance(committed.get("seq"), int)
        if force or behind or int(committed["seq"]) < seq:  # type: ignore[index]
            message = f"mw audit verify: anchor the audit log at seq {seq}"
            commit = write_committed(ws, seq, hash_, message)
    return {"signed": True, "seq": seq, "hash": hash_, "commit": commit}


def trusted_anchors(ws: Workspace) -> dict[str, dict[str, Any]]:
    """The anchors ("local", "git") whose signatures verify now (taken before a rotation)."""
    trusted, revoked = _keys(ws)
    found = {"local": read_local(ws), "git": read_committed(ws)[0]}
    return {
        kind: doc
        for kind, doc in found.items()
        if doc is not None and check_signature(doc, kind, trusted, revoked) is None
    }


def resign(ws: Workspace, anchors: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Re-sign `anchors` unchanged with the current key (after a rotation); paths to commit."""
    from modelworks.security.keys import signing_keys

    private = signing_keys(ws)[0]
    changed: list[str] = []
    for kind, doc in anchors.items():
        signed = sign(kind, int(doc["seq"]), str(doc["hash"]), private, str(doc.get("at")))
        if kind == "local":
            _atomic_write(local_path(ws), signed)
        else:
            _atomic_write(ws.root / committed_path(ws), signed)
            changed.append(committed_path(ws))
    return changed
