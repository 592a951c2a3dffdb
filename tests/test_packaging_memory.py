"""The line's in-memory packaging: the same image, signature and scan verdict as from a folder."""

from __future__ import annotations

import base64
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression

from modelworks.artifacts.oci import OCIStore, model_tar_bytes, sync_store, write_model_tar
from modelworks.artifacts.scan import scan_dir, scan_files
from modelworks.artifacts.sign import (
    SIGNATURE_FILE,
    generate_keypair,
    sign_dir,
    sign_files,
    verify_dir,
)
from modelworks.errors import ArtifactError, VerificationError

NOTES = {"dev.modelworks.fingerprint": "ab" * 32}


@pytest.fixture
def files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    model = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    return {
        "model.skops": sio.dumps(model),
        "metrics.json": b'{"accuracy": 0.97}',
        "profile/reference.json": json.dumps({"f0": [0.1, 0.2]}).encode(),
        "profile/deeper/empty.txt": b"",
        "z.txt": b"x" * 512,  # exactly one tar block: no padding
    }


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


def test_the_tar_and_image_from_memory_equal_those_from_the_folder(
    files: dict[str, bytes], tmp_path: Path
) -> None:
    folder = _folder(tmp_path / "models", files)
    sink = _Sink()
    write_model_tar(folder, sink)  # type: ignore[arg-type]
    assert model_tar_bytes(files) == sink.data
    store = OCIStore(tmp_path / "oci")
    on_disk = store.write_image("from-disk", "v1", folder, NOTES)
    in_memory = store.write_image_files("from-memory", "v1", files, NOTES, durable=False)
    sync_store(store.root)
    assert in_memory.digest == on_disk.digest
    store.verify(in_memory.digest)
    assert store.read_file(in_memory.digest, "profile/reference.json") == b'{"f0": [0.1, 0.2]}'
    assert store.tags("from-memory") == {"v1": in_memory.digest}


def test_a_path_that_is_not_relative_is_refused(tmp_path: Path) -> None:
    store = OCIStore(tmp_path / "oci")
    for bad in ("../up.txt", "/abs.txt", "a//b.txt"):
        with pytest.raises(ArtifactError, match="not a relative path"):
            store.write_image_files("m", "v1", {bad: b"x"}, NOTES)
    assert not (store.repos_dir / "m").exists()


def test_a_short_blob_a_crash_left_is_written_again_not_trusted(
    files: dict[str, bytes], tmp_path: Path
) -> None:
    store = OCIStore(tmp_path / "oci")
    first = store.write_image_files("m", "v1", files, NOTES, durable=False)
    layer = store.manifest(first.digest)["layers"][0]
    blob = store.blob_path(layer["digest"])
    blob.write_bytes(blob.read_bytes()[:100])  # what a power cut before the sync can leave
    with pytest.raises(VerificationError, match="corrupt"):
        store.verify(first.digest)
    again = store.write_image_files("m", "v1", files, NOTES, durable=False)
    assert again.digest == first.digest
    store.verify(again.digest)
    assert blob.stat().st_size == layer["size"]


def test_an_empty_first_index_is_an_empty_repository(
    files: dict[str, bytes], tmp_path: Path
) -> None:
    store = OCIStore(tmp_path / "oci")
    store.write_image_files("m", "v1", files, NOTES, durable=False)
    index = store.layout("m") / "index.json"
    index.write_bytes(b"")  # a first index.json whose data a crash lost
    assert store.tags("m") == {}
    image = store.write_image_files("m", "v2", files, NOTES, durable=False)
    assert store.tags("m") == {"v2": image.digest}
    index.write_bytes(b"{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        store.tags("m")


def test_sync_store_syncs_an_existing_store_and_skips_a_missing_one(tmp_path: Path) -> None:
    store = OCIStore(tmp_path / "oci")
    store.put_blob(b"hello", durable=False)
    sync_store(store.root)
    sync_store(tmp_path / "nowhere")
    assert store.read_blob(store.put_blob(b"hello")) == b"hello"


def test_signing_in_memory_verifies_as_the_folder_signature(
    files: dict[str, bytes], tmp_path: Path
) -> None:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub"
    generate_keypair(private, public)
    folder = _folder(tmp_path / "models", files)
    signature = sign_files(files, private)
    (folder / SIGNATURE_FILE).write_bytes(signature)
    verify_dir(folder, public)

    def statement(bundle: bytes) -> object:
        envelope = json.loads(bundle)["dsseEnvelope"]
        return json.loads(base64.b64decode(envelope["payload"]))

    assert statement(signature) == statement(sign_dir(folder, private).read_bytes())
    (folder / SIGNATURE_FILE).write_bytes(signature)
    (folder / "metrics.json").write_bytes(b'{"accuracy": 1.0}')
    with pytest.raises(VerificationError, match=r"changed: metrics\.json"):
        verify_dir(folder, public)


def test_signing_in_memory_with_another_key_is_refused(
    files: dict[str, bytes], tmp_path: Path
) -> None:
    generate_keypair(tmp_path / "a.pem", tmp_path / "a.pub")
    generate_keypair(tmp_path / "b.pem", tmp_path / "b.pub")
    folder = _folder(tmp_path / "models", files)
    (folder / SIGNATURE_FILE).write_bytes(sign_files(files, tmp_path / "a.pem"))
    with pytest.raises(VerificationError, match="signed with another key"):
        verify_dir(folder, tmp_path / "b.pub")


class _Hostile:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_scanning_in_memory_gives_the_folder_verdict(
    files: dict[str, bytes], tmp_path: Path
) -> None:
    safe = scan_files(files)
    assert safe.safe, safe.to_dict()
    assert safe.to_dict() == scan_dir(_folder(tmp_path / "safe", files)).to_dict()
    hostile = {**files, "extra.pkl": pickle.dumps(_Hostile()), "blob.bin": os.urandom(64)}
    found = scan_files(hostile)
    assert not found.safe
    assert found.to_dict() == scan_dir(_folder(tmp_path / "hostile", hostile)).to_dict()
    assert {(f.file, f.severity) for f in found.findings} >= {
        ("extra.pkl", "critical"),
        ("blob.bin", "critical"),
    }
