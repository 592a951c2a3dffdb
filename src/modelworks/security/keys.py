"""The workspace's keys: where they live, their fingerprints, and signing-key rotation.

Signing (EC P-256, PEM)::

    .mw/keys/signing-key.pem                   private, git-ignored (signing.private_key)
    keys/signing-key.pub.pem                   public, committed (signing.public_key)
    keys/signing-key.20261123T114500Z.pub.pem  retired public key, committed by `mw keys rotate`

Versions signed before a rotation keep verifying: verifiers try the current public key,
then the retired ones, newest first. Rotation deletes the old *private* key (nothing can
sign with it again); `mw keys revoke ID` lists a public key in ``keys/revoked.json`` so it
stops verifying too (see security/revoked.py). Sealing (age X25519) keys sit beside them:
``.mw/keys/sealing-key.txt`` (private) and ``keys/sealing-key.pub`` (public, committed).
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelworks.errors import ConfigError, ConflictError

if TYPE_CHECKING:
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

SECRETS_DIR = "secrets"
SEALING_PUBLIC = "sealing-key.pub"
SEALING_PRIVATE = "sealing-key.txt"


def signing_keys(ws: Workspace) -> tuple[Path, Path]:
    """The configured (private, public) signing key paths, resolved against the workspace."""
    return ws.path(ws.settings.signing.private_key), ws.path(ws.settings.signing.public_key)


def sealing_keys(ws: Workspace) -> tuple[Path, Path]:
    """The (private, public) sealing key paths `mw init` creates."""
    public = ws.path(ws.settings.signing.public_key).parent / SEALING_PUBLIC
    return ws.state_dir / "keys" / SEALING_PRIVATE, public


def secrets_dir(ws: Workspace) -> Path:
    """The folder of committed sealed secrets (secrets/<NAME>.sealed)."""
    return ws.root / SECRETS_DIR


def fingerprint(public_key: Path) -> str:
    """sha256 of the DER SubjectPublicKeyInfo of a PEM public key, as 'sha256:<hex>'."""
    from cryptography.hazmat.primitives import serialization

    try:
        pem = Path(public_key).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{public_key}: cannot read the public key ({exc.strerror})") from None
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        hint = " (it holds a PRIVATE key)" if b"PRIVATE KEY" in pem else ""
        raise ConfigError(f"{public_key}: not a PEM public key{hint}: {exc}") from None
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"sha256:{hashlib.sha256(der).hexdigest()}"


def _split_name(public_key: Path) -> tuple[str, str]:
    """'signing-key.pub.pem' -> ('signing-key', '.pub.pem')."""
    base, dot, rest = public_key.name.partition(".")
    return base, f"{dot}{rest}"


def retired_public_keys(ws: Workspace) -> list[Path]:
    """Public keys retired by `mw keys rotate`, newest first."""
    _private, public = signing_keys(ws)
    base, suffix = _split_name(public)
    if not public.parent.is_dir():
        return []
    found = [
        p
        for p in public.parent.glob(f"{base}.*{suffix}")
        if p != public and p.name[len(base) + 1 : -len(suffix) or None].endswith("Z")
    ]
    return sorted(found, key=lambda p: p.name, reverse=True)


def all_public_keys(ws: Workspace) -> list[Path]:
    """The current public signing key, then the retired ones (revoked or not)."""
    _private, public = signing_keys(ws)
    if not public.is_file():
        raise ConfigError(
            f"signing public key {public} is missing: signatures cannot be verified. Restore it "
            "from Git, point settings.signing.public_key at it, or run `mw init` for a new "
            "workspace"
        )
    return [public, *retired_public_keys(ws)]


def trusted_public_keys(ws: Workspace) -> list[Path]:
    """The keys that verify: the current one, then retired ones not revoked; ConfigError if none."""
    from modelworks.security.revoked import revoked_keys

    keys, revoked = all_public_keys(ws), revoked_keys(ws)
    return [k for k in keys if not revoked or _fingerprint_or_none(k) not in revoked]


def _fingerprint_or_none(key: Path) -> str | None:
    """The fingerprint, or None for an unreadable key (verifying with it says why)."""
    try:
        return fingerprint(key)
    except ConfigError:
        return None


def revoked_public_keys(ws: Workspace) -> list[Path]:
    """The retired public keys that `mw keys revoke` revoked, newest first."""
    from modelworks.security.revoked import revoked_keys

    keys, revoked = all_public_keys(ws), revoked_keys(ws)
    return [k for k in keys if revoked and _fingerprint_or_none(k) in revoked]


def rotate_signing_key(
    ws: Workspace, store: Store, *, actor: str, keep_old: bool = True
) -> dict[str, Any]:
    """Make a new signing key pair and delete the old private key.

    The old public key is kept (retired) so older versions verify, unless keep_old is False.
    """
    from modelworks import _git
    from modelworks.registry import audit
    from modelworks.security.anchor import resign, trusted_anchors

    private, public = signing_keys(ws)
    before = fingerprint(public)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base, suffix = _split_name(public)
    retired = public.with_name(f"{base}.{stamp}{suffix}")
    if retired.exists():
        raise ConflictError(f"{retired} already exists: the key was rotated a moment ago; retry")
    anchors = trusted_anchors(ws)
    _generate_and_swap(private, public, retired, keep_old)
    after = fingerprint(public)
    resigned = resign(ws, anchors)  # so revoking the old key leaves the audit anchors valid
    paths = [p for p in (public, retired) if p.exists() and ws.contains(p)]
    commit = None
    if paths and _git.is_repo(ws.root):
        rel = [p.relative_to(ws.root).as_posix() for p in paths] + resigned
        commit = _git.commit(
            ws.root, rel, f"mw keys rotate: signing key {after[7:19]}", author=actor
        )
    result = {
        "before": {
            "fingerprint": before,
            "retired_as": ws.show(retired) if keep_old else None,
            "private_key": "deleted",
        },
        "after": {"fingerprint": after, "public_key": ws.show(public)},
        "commit": commit,
    }
    audit.record(
        store,
        [
            audit.event(
                "key.rotated",
                "signing-key",
                actor=actor,
                before=result["before"],
                after=result["after"],
            )
        ],
    )
    return result


def _generate_and_swap(private: Path, public: Path, retired: Path, keep: bool) -> None:
    from modelworks.artifacts.sign import generate_keypair

    new_private = private.with_name(f".{private.name}.new")
    new_public = public.with_name(f".{public.name}.new")
    for leftover in (new_private, new_public):
        leftover.unlink(missing_ok=True)
    generate_keypair(new_private, new_public)
    if keep:
        os.replace(public, retired)
    else:
        public.unlink()
    os.replace(new_private, private)  # the old private key is overwritten: it is gone
    os.replace(new_public, public)
    for archived in _archived_private_keys(private):
        archived.unlink(missing_ok=True)


def _archived_private_keys(private: Path) -> list[Path]:
    """Old private keys that earlier versions of `mw keys rotate` renamed and kept beside it."""
    base, dot, rest = private.name.partition(".")
    pattern = f"{base}.*Z{dot}{rest}" if rest else f"{base}.*Z"
    return [p for p in private.parent.glob(pattern) if p != private]


def check_secret_name(name: str) -> None:
    """ConfigError unless `name` is a valid secret name (checked before asking for the value)."""
    from modelworks.security.secrets import _check_name

    _check_name(name)


def seal_secret(
    ws: Workspace, store: Store, name: str, value: bytes, *, actor: str, commit: bool = True
) -> dict[str, Any]:
    """Seal `value` to the workspace's public sealing key as secrets/<name>.sealed; commit it."""
    from modelworks import _git
    from modelworks.registry import audit
    from modelworks.security.secrets import seal

    if not value:
        raise ConfigError(f"secret {name!r}: the value is empty; nothing to seal")
    _private, public = sealing_keys(ws)
    if not public.is_file():
        raise ConfigError(
            f"sealing public key {public} is missing: restore it from Git "
            "(it is created by `mw init`)"
        )
    replaced = (secrets_dir(ws) / f"{name}.sealed").exists()
    path = seal(name, value, public, secrets_dir(ws))
    rel = ws.show(path)
    sha = None
    if commit and _git.is_repo(ws.root):
        verb = "reseal" if replaced else "seal"
        sha = _git.commit(ws.root, [rel], f"mw secret {verb} {name}", author=actor)
    audit.record(
        store,
        [
            audit.event(
                "secret.sealed",
                name,
                actor=actor,
                after={"path": rel, "replaced": replaced, "commit": sha},
            )
        ],
    )
    return {"name": name, "path": rel, "replaced": replaced, "commit": sha}
