"""Sign and verify model folders with OpenSSF model signing (EC P-256 keys, no network).

The signature is a Sigstore bundle written to ``<model_dir>/model.sig``. It covers every
file in the folder except itself; git metadata files are covered too, so nothing in the
folder can change unnoticed.

`sign_files` signs a model folder that is still in memory (name -> bytes, as the line builds
it): each file is hashed once, and the key is loaded once per process. The bundle is the one
`sign_dir` writes for the same files (same manifest, same serialization), so `verify_dir`
and the serving loader verify it the same way.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from modelworks.errors import ArtifactError, ConfigError, VerificationError

SIGNATURE_FILE = "model.sig"


def generate_keypair(private_key: Path, public_key: Path) -> None:
    """Write a new EC P-256 key pair as PEM (private key mode 0600); never overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    for path in (private_key, public_key):
        if Path(path).exists():
            raise ConfigError(f"{path}: key file already exists; refusing to overwrite it")
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    Path(private_key).parent.mkdir(parents=True, exist_ok=True)
    Path(public_key).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem)
    Path(public_key).write_bytes(public_pem)


def sign_dir(model_dir: Path, private_key: Path) -> Path:
    """Sign every file in `model_dir`; return the path of the written model.sig."""
    from model_signing import signing

    model_dir = _model_dir(model_dir)
    _check_key(private_key, "private")
    signature = model_dir / SIGNATURE_FILE
    try:
        config = signing.Config()  # type: ignore[no-untyped-call]
        config.use_elliptic_key_signer(private_key=private_key)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{private_key}: not a usable EC private key ({exc})") from exc
    try:
        config.set_hashing_config(_hashing()).sign(model_dir, signature)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{model_dir}: could not sign the model ({exc})") from exc
    return signature


def sign_files(files: Mapping[str, bytes], private_key: Path, model_name: str = "models") -> bytes:
    """The model.sig bytes `sign_dir` would write for a folder holding exactly `files`.

    `files` maps each relative posix path to its content (model.sig itself excluded);
    `model_name` is the folder's name, which the signed statement records as its subject.
    """
    from model_signing import manifest
    from model_signing._hashing import hashing
    from model_signing._signing import signing

    items = [
        manifest.FileManifestItem(
            path=PurePosixPath(name),
            digest=hashing.Digest("sha256", hashlib.sha256(data).digest()),
        )
        for name, data in files.items()
        if name != SIGNATURE_FILE
    ]
    # What model_signing's file serialization records for _hashing(): the same on verify.
    serialization = manifest._FileSerialization(
        "sha256", allow_symlinks=False, ignore_paths=[Path(SIGNATURE_FILE)]
    )
    payload = signing.Payload(manifest.Manifest(model_name, items, serialization))
    try:
        bundle: str = _signer(Path(private_key)).sign(payload).bundle.to_json()
    except ValueError as exc:
        raise ArtifactError(f"{model_name}: could not sign the model ({exc})") from exc
    return bundle.encode("utf-8")


_SIGNERS: dict[tuple[str, int, int], Any] = {}


def _signer(private_key: Path) -> Any:
    """The EC signer of a key file, parsed once per process (until the file changes)."""
    from model_signing._signing import sign_ec_key

    try:
        st = private_key.stat()
    except OSError as exc:
        raise ConfigError(f"{private_key}: cannot read the private key ({exc.strerror})") from exc
    key = (str(private_key), st.st_mtime_ns, st.st_size)
    if key not in _SIGNERS:
        try:
            _SIGNERS[key] = sign_ec_key.Signer(private_key)
        except OSError as exc:
            raise ConfigError(f"{private_key}: cannot read the private key ({exc})") from exc
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{private_key}: not a usable EC private key ({exc})") from exc
    return _SIGNERS[key]


def verify_dir(model_dir: Path, public_key: Path) -> None:
    """Raise VerificationError unless model.sig matches `model_dir` and `public_key`."""
    from cryptography.exceptions import InvalidSignature
    from model_signing import verifying

    model_dir = _model_dir(model_dir)
    _check_key(public_key, "public")
    signature = model_dir / SIGNATURE_FILE
    if not signature.is_file():
        raise VerificationError(f"{model_dir}: no signature ({SIGNATURE_FILE} is missing)")
    try:
        config = verifying.Config()  # type: ignore[no-untyped-call]
        config.use_elliptic_key_verifier(public_key=public_key)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{public_key}: not a usable EC public key ({exc})") from exc
    try:
        config.set_hashing_config(_hashing()).verify(model_dir, signature)
    except ValueError as exc:
        raise VerificationError(_explain(model_dir, public_key, str(exc))) from exc
    except InvalidSignature as exc:
        raise VerificationError(
            f"{signature}: the signature is invalid (the signed manifest was altered "
            f"or not signed by the key in {public_key})"
        ) from exc
    except Exception as exc:  # a garbled bundle fails deep inside the parsers
        raise VerificationError(
            f"{signature}: signature file is corrupt or not a model signing bundle "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _hashing() -> Any:
    from model_signing import hashing

    config = hashing.Config()  # type: ignore[no-untyped-call]
    # Model folders are a few small files: a thread pool per signature costs more than it saves.
    config.use_file_serialization(max_workers=1)
    return config.set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)


def _model_dir(model_dir: Path) -> Path:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise VerificationError(f"{model_dir}: model folder does not exist")
    return model_dir


def _check_key(path: Path, kind: str) -> None:
    try:
        Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {kind} key ({exc.strerror})") from exc


def _explain(model_dir: Path, public_key: Path, message: str) -> str:
    if message.startswith("Key mismatch"):
        return f"{model_dir}: signed with another key, not the one in {public_key}"
    if not message.startswith("Signature mismatch"):
        return (
            f"{model_dir / SIGNATURE_FILE}: signature file is corrupt or not a model signing "
            f"bundle ({message})"
        )
    # The library reports a repr'd list of strings; pull the file names back out.
    changed = re.findall(r"Hash mismatch for \\?'(.+?)\\?':", message)
    extra = re.findall(r"Extra files found in model \\?'.*?\\?': (.*?)['\"](?:,|\])", message)
    missing = re.findall(r"Missing files in model \\?'.*?\\?': (.*?)['\"](?:,|\])", message)
    parts = [f"changed: {', '.join(changed)}"] if changed else []
    parts += [f"added: {extra[0]}"] if extra else []
    parts += [f"removed: {missing[0]}"] if missing else []
    detail = "; ".join(parts) or message
    return f"{model_dir}: model files do not match the signature ({detail})"
