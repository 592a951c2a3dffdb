"""Sealed secrets: values encrypted to a public key so they can be committed to Git.

Like Bitnami Sealed Secrets, anyone with the public key can seal; only the holder of the
private key (the controller) can unseal. Encryption is age (X25519 + ChaCha20-Poly1305,
via pyrage), ASCII-armored so a sealed file diffs cleanly. The secret's name is sealed
inside with the value, so renaming a sealed file to another secret's name is refused.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

from modelworks.errors import ConfigError, NotFoundError, VerificationError, did_you_mean

SUFFIX = ".sealed"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")
_HEADER = b"modelworks-sealed-secret/v1\nname: %s\n\n"


def generate_sealing_key(private_key: Path, public_key: Path) -> None:
    """Write a new age X25519 key pair (private key mode 0600); never overwrite."""
    import pyrage

    for path in (private_key, public_key):
        if Path(path).exists():
            raise ConfigError(f"{path}: key file already exists; refusing to overwrite it")
    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())
    created = datetime.now(UTC).isoformat(timespec="seconds")
    text = f"# created: {created}\n# public key: {recipient}\n{identity}\n"
    Path(private_key).parent.mkdir(parents=True, exist_ok=True)
    Path(public_key).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    Path(public_key).write_text(recipient + "\n")


def seal(name: str, value: bytes, public_key: Path, secrets_dir: Path) -> Path:
    """Encrypt `value` to `public_key`; write and return secrets_dir/<name>.sealed."""
    import pyrage

    _check_name(name)
    recipient = _read_key(public_key, "age1", "public")
    try:
        parsed = pyrage.x25519.Recipient.from_str(recipient)
    except pyrage.RecipientError as exc:
        raise ConfigError(f"{public_key}: not an age public key ({exc})") from exc
    sealed = pyrage.encrypt(_HEADER % name.encode() + value, [parsed], armored=True)
    target = Path(secrets_dir) / f"{name}{SUFFIX}"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.tmp")
    partial.write_bytes(sealed)
    partial.replace(target)
    return target


def unseal(name: str, private_key: Path, secrets_dir: Path) -> bytes:
    """Decrypt secrets_dir/<name>.sealed with `private_key` and return the value."""
    import pyrage

    _check_name(name)
    path = Path(secrets_dir) / f"{name}{SUFFIX}"
    if not path.is_file():
        hint = did_you_mean(name, list_sealed(secrets_dir))
        raise NotFoundError(f"sealed secret '{name}' not found: {path} does not exist.{hint}")
    secret = _read_key(private_key, "AGE-SECRET-KEY-", "private")
    try:
        identity = pyrage.x25519.Identity.from_str(secret)
    except pyrage.IdentityError as exc:
        raise ConfigError(f"{private_key}: not an age private key ({exc})") from exc
    try:
        plain = pyrage.decrypt(path.read_bytes(), [identity])
    except pyrage.DecryptError as exc:
        raise VerificationError(_decrypt_failure(path, private_key, str(exc))) from exc
    return _strip_header(plain, name, path)


def list_sealed(secrets_dir: Path) -> list[str]:
    """Return the names of the sealed secrets in `secrets_dir`, sorted."""
    folder = Path(secrets_dir)
    if not folder.is_dir():
        return []
    names = (p.name[: -len(SUFFIX)] for p in folder.glob(f"*{SUFFIX}") if p.is_file())
    return sorted(n for n in names if _NAME.fullmatch(n))


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"secret name {name!r} is invalid: use 1-200 letters, digits, '_', '.' or '-'"
        )


def _read_key(path: Path, prefix: str, kind: str) -> str:
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the {kind} sealing key ({exc})") from exc
    for line in lines:
        if line.strip().startswith(prefix):
            return line.strip()
    raise ConfigError(f"{path}: no {kind} sealing key in it (expected a line '{prefix}…')")


def _decrypt_failure(path: Path, private_key: Path, message: str) -> str:
    if "No matching keys" in message:
        return (
            f"{path}: was not sealed for the key in {private_key} "
            "(wrong key, or the sealed file's header was altered)"
        )
    reason = message.splitlines()[0] if message else "unknown error"
    return f"{path}: sealed file is corrupted or not an age file ({reason})"


def _strip_header(plain: bytes, name: str, path: Path) -> bytes:
    header = _HEADER % name.encode()
    if plain.startswith(header):
        return plain[len(header) :]
    sealed_for = re.match(rb"modelworks-sealed-secret/v1\nname: (.*)\n\n", plain)
    what = f"secret '{sealed_for.group(1).decode()}'" if sealed_for else "no named secret"
    raise VerificationError(f"{path}: holds {what}, not '{name}' (was the file renamed?)")
