"""Sealed secrets round-trip through real age encryption and refuse what they should."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from modelworks.errors import ConfigError, NotFoundError, VerificationError
from modelworks.security.secrets import generate_sealing_key, list_sealed, seal, unseal

VALUE = b"postgres://mw:s3cr3t-Passw0rd@db/registry"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "keys" / "sealing.key", tmp_path / "keys" / "sealing.pub"
    generate_sealing_key(private, public)
    return private, public


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    return tmp_path / "repo" / "secrets"


def test_round_trip(keys: tuple[Path, Path], secrets_dir: Path) -> None:
    private, public = keys
    path = seal("registry-url", VALUE, public, secrets_dir)
    assert path == secrets_dir / "registry-url.sealed"
    assert unseal("registry-url", private, secrets_dir) == VALUE
    seal("empty_value.v2", b"", public, secrets_dir)
    assert unseal("empty_value.v2", private, secrets_dir) == b""
    assert list_sealed(secrets_dir) == ["empty_value.v2", "registry-url"]


def test_sealed_file_is_armored_and_holds_no_plaintext(
    keys: tuple[Path, Path], secrets_dir: Path
) -> None:
    text = seal("db", VALUE, keys[1], secrets_dir).read_bytes()
    assert text.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----")
    assert all(len(line) <= 64 and line.isascii() for line in text.splitlines())
    assert b"s3cr3t" not in text
    assert VALUE not in text
    assert seal("db", VALUE, keys[1], secrets_dir).read_bytes() != text  # fresh randomness


def test_key_files(keys: tuple[Path, Path]) -> None:
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert "AGE-SECRET-KEY-1" in private.read_text()
    assert public.read_text().startswith("age1")
    assert f"# public key: {public.read_text().strip()}" in private.read_text()
    with pytest.raises(ConfigError, match="already exists"):
        generate_sealing_key(private, public)


def test_wrong_key_is_a_clear_error(
    keys: tuple[Path, Path], secrets_dir: Path, tmp_path: Path
) -> None:
    other_private, other_public = tmp_path / "other.key", tmp_path / "other.pub"
    generate_sealing_key(other_private, other_public)
    seal("db", VALUE, keys[1], secrets_dir)
    with pytest.raises(VerificationError, match=r"db\.sealed: was not sealed for the key"):
        unseal("db", other_private, secrets_dir)


def test_corrupted_file_is_a_clear_error(keys: tuple[Path, Path], secrets_dir: Path) -> None:
    path = seal("db", VALUE, keys[1], secrets_dir)
    original = path.read_text()
    lines = original.splitlines()
    payload = lines[-2]  # the last armored line is ciphertext, past the header
    lines[-2] = payload[:3] + ("A" if payload[3] != "A" else "B") + payload[4:]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(VerificationError, match=r"db\.sealed: sealed file is corrupted"):
        unseal("db", keys[0], secrets_dir)
    path.write_text(original.replace("-----BEGIN AGE ENCRYPTED FILE-----\n", ""))
    with pytest.raises(VerificationError, match="corrupted"):
        unseal("db", keys[0], secrets_dir)
    path.write_text("hello")
    with pytest.raises(VerificationError, match="corrupted"):
        unseal("db", keys[0], secrets_dir)


def test_renamed_sealed_file_is_refused(keys: tuple[Path, Path], secrets_dir: Path) -> None:
    path = seal("db_password", VALUE, keys[1], secrets_dir)
    path.rename(secrets_dir / "api_token.sealed")
    with pytest.raises(VerificationError, match="holds secret 'db_password', not 'api_token'"):
        unseal("api_token", keys[0], secrets_dir)


@pytest.mark.parametrize("bad", ["../escape", "a/b", "", "with space", "x" * 201, "ünïcode"])
def test_bad_name_is_an_error_naming_it(
    keys: tuple[Path, Path], secrets_dir: Path, bad: str
) -> None:
    with pytest.raises(ConfigError, match=r"secret name .* is invalid") as info:
        seal(bad, VALUE, keys[1], secrets_dir)
    assert repr(bad) in str(info.value)
    assert not secrets_dir.exists()


def test_missing_secret_and_missing_keys(
    keys: tuple[Path, Path], secrets_dir: Path, tmp_path: Path
) -> None:
    seal("registry-url", VALUE, keys[1], secrets_dir)
    with pytest.raises(
        NotFoundError, match=r"'registry-ulr' not found.*Did you mean 'registry-url'"
    ):
        unseal("registry-ulr", keys[0], secrets_dir)
    with pytest.raises(ConfigError, match="cannot read the private sealing key"):
        unseal("registry-url", tmp_path / "missing.key", secrets_dir)
    with pytest.raises(ConfigError, match="no public sealing key in it"):
        seal("x", VALUE, keys[0], secrets_dir)
    assert list_sealed(tmp_path / "nowhere") == []
