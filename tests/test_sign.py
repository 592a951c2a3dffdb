"""OpenSSF model signing of model folders with real EC keys."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from modelworks.artifacts.sign import SIGNATURE_FILE, generate_keypair, sign_dir, verify_dir
from modelworks.errors import ConfigError, VerificationError


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "keys" / "signing.key", tmp_path / "keys" / "signing.pub"
    generate_keypair(private, public)
    return private, public


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(bytes(range(256)) * 400)  # ~100 KB
    (folder / "sub" / "metrics.json").write_text('{"accuracy": 0.9}')
    return folder


def test_keypair_is_pem_private_key_is_0600_and_never_overwritten(
    keys: tuple[Path, Path],
) -> None:
    private, public = keys
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    before = private.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        generate_keypair(private, public.with_name("other.pub"))
    assert private.read_bytes() == before


def test_sign_then_verify(model_dir: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    started = time.perf_counter()
    signature = sign_dir(model_dir, private)
    signed = time.perf_counter()
    verify_dir(model_dir, public)
    verified = time.perf_counter()
    assert signature == model_dir / SIGNATURE_FILE
    assert '"dsseEnvelope"' in signature.read_text()
    # The line signs thousands of models: both steps must stay cheap (measured ~10 ms).
    assert signed - started < 2.0
    assert verified - signed < 2.0


def test_one_changed_byte_is_refused_and_named(model_dir: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    sign_dir(model_dir, private)
    data = bytearray((model_dir / "model.onnx").read_bytes())
    data[1234] ^= 0x01
    (model_dir / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(
        VerificationError, match=r"do not match the signature \(changed: model.onnx"
    ):
        verify_dir(model_dir, public)


def test_added_file_is_refused(model_dir: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    sign_dir(model_dir, private)
    (model_dir / "sub" / "extra.pkl").write_bytes(b"x")
    with pytest.raises(VerificationError, match=r"added: sub/extra.pkl"):
        verify_dir(model_dir, public)


def test_git_metadata_is_signed_too(model_dir: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    sign_dir(model_dir, private)
    (model_dir / ".gitattributes").write_text("* filter=evil\n")
    with pytest.raises(VerificationError, match=r"added: .gitattributes"):
        verify_dir(model_dir, public)


def test_removed_file_is_refused(model_dir: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    sign_dir(model_dir, private)
    (model_dir / "sub" / "metrics.json").unlink()
    with pytest.raises(VerificationError, match=r"removed: sub/metrics.json"):
        verify_dir(model_dir, public)


def test_signature_from_another_key_is_refused(
    model_dir: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    private, _ = keys
    other_private, other_public = tmp_path / "other.key", tmp_path / "other.pub"
    generate_keypair(other_private, other_public)
    sign_dir(model_dir, private)
    with pytest.raises(VerificationError, match="signed with another key"):
        verify_dir(model_dir, other_public)


@pytest.mark.parametrize("garbage", [b"not json {", b'{"mediaType": "x"}', b""])
def test_garbled_signature_is_refused(
    model_dir: Path, keys: tuple[Path, Path], garbage: bytes
) -> None:
    private, public = keys
    sign_dir(model_dir, private)
    (model_dir / SIGNATURE_FILE).write_bytes(garbage)
    with pytest.raises(VerificationError, match="corrupt or not a model signing bundle"):
        verify_dir(model_dir, public)


def test_forged_payload_is_refused(model_dir: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    signature = sign_dir(model_dir, private)
    text = signature.read_text()
    marker = '"payload":"'
    start = text.index(marker) + len(marker)
    flipped = "A" if text[start + 40] != "A" else "B"
    signature.write_text(text[: start + 40] + flipped + text[start + 41 :])
    with pytest.raises(VerificationError, match="the signature is invalid"):
        verify_dir(model_dir, public)


def test_missing_signature_is_refused(model_dir: Path, keys: tuple[Path, Path]) -> None:
    with pytest.raises(VerificationError, match=r"model\.sig is missing"):
        verify_dir(model_dir, keys[1])


def test_missing_or_bad_key_file_is_a_config_error(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nokey\.pem: cannot read the private key"):
        sign_dir(model_dir, tmp_path / "nokey.pem")
    with pytest.raises(ConfigError, match=r"nokey\.pub: cannot read the public key"):
        verify_dir(model_dir, tmp_path / "nokey.pub")
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(ConfigError, match=r"bad\.pem: not a usable EC private key"):
        sign_dir(model_dir, tmp_path / "bad.pem")


def test_public_key_that_is_not_one_is_a_config_error(
    model_dir: Path, keys: tuple[Path, Path]
) -> None:
    private, _ = keys
    sign_dir(model_dir, private)
    with pytest.raises(ConfigError, match=r"signing\.key: not a usable EC public key"):
        verify_dir(model_dir, private)
