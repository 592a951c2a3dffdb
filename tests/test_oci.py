"""The local OCI image layout store: ModelCars that skopeo reads, verified and extracted safely."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression

from modelworks.artifacts.oci import (
    CONFIG_TYPE,
    LAYER_TYPE,
    ImageRef,
    OCIStore,
    build_manifest,
    canonical_json,
)
from modelworks.errors import ArtifactError, NotFoundError, VerificationError

ANNOTATIONS = {
    "dev.modelworks.fingerprint": "f7844fe3d7" + "0" * 54,
    "org.opencontainers.image.created": "2026-01-01T00:00:00Z",
}

needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model folder: a small sklearn model saved with skops, metrics and a sub-folder."""
    folder = tmp_path_factory.mktemp("model")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    sio.dump(LogisticRegression().fit(X, y), folder / "model.skops")
    (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.97}))
    (folder / "profile").mkdir()
    (folder / "profile" / "reference.json").write_text(json.dumps({"f0": [0.1, 0.2]}))
    return folder


@pytest.fixture
def store(tmp_path: Path) -> OCIStore:
    return OCIStore(tmp_path / ".mw" / "oci")


def skopeo(*args: str) -> str:
    out = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def blob_files(store: OCIStore) -> list[str]:
    return sorted(p.name for p in store.blobs_dir.iterdir() if not p.name.startswith("."))


@needs_skopeo
def test_skopeo_inspects_the_image_and_its_annotations(store: OCIStore, model_dir: Path) -> None:
    ref = store.write_image("churn-predictor-model", "f7844fe3d7", model_dir, ANNOTATIONS)

    info = json.loads(skopeo("inspect", ref.skopeo_ref))
    raw = json.loads(skopeo("inspect", "--raw", ref.skopeo_ref))

    assert info["Digest"] == ref.digest
    assert info["Os"] == "linux"
    assert raw["annotations"] == ANNOTATIONS
    assert raw["layers"][0]["mediaType"] == LAYER_TYPE
    assert raw["config"]["mediaType"] == CONFIG_TYPE


@needs_skopeo
def test_skopeo_copies_the_image_to_a_dir(store: OCIStore, model_dir: Path, tmp_path: Path) -> None:
    ref = store.write_image("tenant-a/churn", "v1", model_dir, ANNOTATIONS)
    out = tmp_path / "copied"

    skopeo("copy", ref.skopeo_ref, f"dir:{out}")

    manifest = json.loads((out / "manifest.json").read_bytes())
    layer = out / manifest["layers"][0]["digest"].split(":")[1]
    with tarfile.open(layer) as tar:
        names = tar.getnames()
    assert "models/model.skops" in names
    assert "models/profile/reference.json" in names
    assert hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest() == ref.digest[7:]


def test_same_files_give_the_same_digest(store: OCIStore, model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    os.utime(copy / "metrics.json", (1, 1))
    (copy / "metrics.json").chmod(0o600)

    first = store.write_image("churn", "a", model_dir, ANNOTATIONS)
    second = store.write_image("churn", "b", copy, ANNOTATIONS)

    assert first.digest == second.digest
    (copy / "metrics.json").write_text('{"accuracy": 0.5}')
    assert store.write_image("churn", "c", copy, ANNOTATIONS).digest != first.digest


def test_layer_tar_is_deterministic(store: OCIStore, model_dir: Path) -> None:
    ref = store.write_image("churn", "v1", model_dir, {})
    layer = store.manifest(ref.digest)["layers"][0]

    with tarfile.open(store.blob_path(layer["digest"])) as tar:
        members = tar.getmembers()

    names = [m.name for m in members]
    assert names[0] == "models"
    assert names == ["models", *sorted(names[1:])]
    assert {(m.mtime, m.uid, m.gid, m.uname) for m in members} == {(0, 0, 0, "")}
    assert {m.mode for m in members if m.isfile()} == {0o644}
    assert all(not m.pax_headers for m in members)


def test_two_repos_share_blobs(store: OCIStore, model_dir: Path) -> None:
    a = store.write_image("team-a/churn", "v1", model_dir, ANNOTATIONS)
    b = store.write_image("team-b/churn", "v1", model_dir, ANNOTATIONS)

    assert a.digest == b.digest
    assert len(blob_files(store)) == 3  # layer, config, manifest: one file each
    assert os.path.samefile(a.layout / "blobs", b.layout / "blobs")
    assert not Path(os.readlink(a.layout / "blobs")).is_absolute()
    assert store.repos() == ["team-a/churn", "team-b/churn"]


def test_writing_a_tag_again_replaces_its_entry(store: OCIStore, model_dir: Path) -> None:
    old = store.write_image("churn", "latest", model_dir, {"k": "1"})
    new = store.write_image("churn", "latest", model_dir, {"k": "2"})

    index = json.loads((store.layout("churn") / "index.json").read_bytes())
    assert [m["digest"] for m in index["manifests"]] == [new.digest]
    assert old.digest != new.digest
    assert store.tags("churn") == {"latest": new.digest}
    assert store.resolve("churn", "latest") == new


def test_resolve_names_what_is_missing(store: OCIStore, model_dir: Path) -> None:
    store.write_image("churn", "v1", model_dir, {})

    with pytest.raises(NotFoundError, match=r"'churn:v2' not found.*\(tags: v1\)"):
        store.resolve("churn", "v2")
    with pytest.raises(NotFoundError, match=r"'churn:v1.0' not found.*Did you mean 'v1'"):
        store.resolve("churn", "v1.0")
    with pytest.raises(NotFoundError, match=r"'chrun:v1' not found.*Did you mean 'churn'"):
        store.resolve("chrun", "v1")


@pytest.mark.parametrize(
    ("repo", "tag", "bad"),
    [
        ("Churn", "v1", "'Churn'"),
        ("team//churn", "v1", "'team//churn'"),
        ("churn-", "v1", "'churn-'"),
        ("../churn", "v1", "'../churn'"),
        ("churn", "-v1", "'-v1'"),
        ("churn", "v" * 129, "'" + "v" * 129 + "'"),
        ("churn", "v1/x", "'v1/x'"),
    ],
)
def test_invalid_repo_or_tag_is_named(
    store: OCIStore, model_dir: Path, repo: str, tag: str, bad: str
) -> None:
    with pytest.raises(ArtifactError, match=f"invalid OCI (repository name|tag) {bad}"):
        store.write_image(repo, tag, model_dir, {})
    assert store.repos() == []


def test_extract_round_trips_a_loadable_model(
    store: OCIStore, model_dir: Path, tmp_path: Path
) -> None:
    ref = store.write_image("churn", "v1", model_dir, ANNOTATIONS)

    dest = store.extract(ref.digest, tmp_path / "out" / "churn")

    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == ["metrics.json", "model.skops", "profile/reference.json"]
    assert (dest / "model.skops").read_bytes() == (model_dir / "model.skops").read_bytes()
    untrusted = sio.get_untrusted_types(file=dest / "model.skops")
    model = sio.load(dest / "model.skops", trusted=untrusted)
    assert model.predict(np.array([[3.0, 3.0, 0.0], [-3.0, -3.0, 0.0]])).tolist() == [1, 0]
    assert [p.name for p in dest.parent.iterdir()] == ["churn"]  # no temp folder left


def test_extract_refuses_an_existing_destination(
    store: OCIStore, model_dir: Path, tmp_path: Path
) -> None:
    ref = store.write_image("churn", "v1", model_dir, {})
    dest = store.extract(ref.digest, tmp_path / "out")

    with pytest.raises(ArtifactError, match="already exists"):
        store.extract(ref.digest, dest)
    assert store.extract(ref.digest, dest, exist_ok=True) == dest


def test_read_file_reads_one_file(store: OCIStore, model_dir: Path) -> None:
    ref = store.write_image("churn", "v1", model_dir, {})

    assert json.loads(store.read_file(ref.digest, "metrics.json")) == {"accuracy": 0.97}
    assert store.read_file(ref.digest, "profile/reference.json").startswith(b'{"f0"')
    with pytest.raises(NotFoundError, match=r"no file models/missing\.json"):
        store.read_file(ref.digest, "missing.json")


def test_verify_catches_a_flipped_byte_in_a_layer(
    store: OCIStore, model_dir: Path, tmp_path: Path
) -> None:
    ref = store.write_image("churn", "v1", model_dir, ANNOTATIONS)
    layer = store.manifest(ref.digest)["layers"][0]["digest"]
    path = store.blob_path(layer)
    data = bytearray(path.read_bytes())
    data[700] ^= 0x01
    path.write_bytes(bytes(data))

    with pytest.raises(VerificationError, match=f"blob {layer} \\(layer 0 of manifest"):
        store.verify(ref.digest)
    with pytest.raises(VerificationError, match=layer):
        store.extract(ref.digest, tmp_path / "out")
    with pytest.raises(VerificationError, match=layer):
        store.read_file(ref.digest, "metrics.json")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.glob(".tmp-*")) == []


def test_manifest_checks_its_own_digest(store: OCIStore, model_dir: Path) -> None:
    ref = store.write_image("churn", "v1", model_dir, ANNOTATIONS)
    path = store.blob_path(ref.digest)
    path.write_bytes(path.read_bytes().replace(b"f7844fe3d7", b"00000fe3d7"))

    with pytest.raises(VerificationError, match=f"blob {ref.digest} .* is corrupt"):
        store.manifest(ref.digest)


def _tagged_tar(store: OCIStore, members: list[tuple[tarfile.TarInfo, bytes]]) -> ImageRef:
    """Tag an image whose single layer is the given tar (digests all valid)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    layer = buf.getvalue()
    layer_digest = store.put_blob(layer)
    config = canonical_json({"architecture": "amd64", "os": "linux", "rootfs": {}})
    manifest = build_manifest(
        {"mediaType": CONFIG_TYPE, "digest": store.put_blob(config), "size": len(config)},
        [{"mediaType": LAYER_TYPE, "digest": layer_digest, "size": len(layer)}],
        {},
    )
    return store.tag_manifest("evil", "v1", manifest)


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _symlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, b""


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_file("models/../../escaped.txt", b"x"), "unsafe tar entry 'models/../../escaped.txt'"),
        (_file("/tmp/absolute.txt", b"x"), "unsafe tar entry '/tmp/absolute.txt'"),
        (_symlink("models/link", "/etc/passwd"), "'models/link': links and special files"),
    ],
)
def test_extract_refuses_unsafe_entries(
    store: OCIStore, tmp_path: Path, member: tuple[tarfile.TarInfo, bytes], message: str
) -> None:
    ref = _tagged_tar(store, [_file("models/ok.txt", b"ok"), member])
    store.verify(ref.digest)  # the digests are fine: the content is what is refused

    with pytest.raises(ArtifactError, match=message):
        store.extract(ref.digest, tmp_path / "out" / "dest")
    assert list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists()


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from modelworks.artifacts.oci import OCIStore
    store = OCIStore(Path(sys.argv[1]))
    for i in range(int(sys.argv[4])):
        (Path(sys.argv[2]) / "metrics.json").write_text(str(i))
        store.write_image("fleet/churn", f"{sys.argv[3]}-{i}", Path(sys.argv[2]), {"i": str(i)})
    """
)


def test_concurrent_writers_keep_every_tag(
    store: OCIStore, model_dir: Path, tmp_path: Path
) -> None:
    procs = []
    for w in range(4):
        folder = tmp_path / f"model-{w}"
        shutil.copytree(model_dir, folder)
        cmd = [sys.executable, "-c", _WRITER, str(store.root), str(folder), f"w{w}", "15"]
        procs.append(subprocess.Popen(cmd, stderr=subprocess.PIPE))
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()

    index = json.loads((store.layout("fleet/churn") / "index.json").read_bytes())
    tags = store.tags("fleet/churn")
    assert len(index["manifests"]) == 60
    assert set(tags) == {f"w{w}-{i}" for w in range(4) for i in range(15)}
    assert tags["w0-3"] == tags["w3-3"]  # same files and annotations, same digest
    for digest in set(tags.values()):
        store.verify(digest)


def test_leftover_temp_files_are_ignored(store: OCIStore, model_dir: Path) -> None:
    first = store.write_image("churn", "v1", model_dir, {})
    # a writer killed mid-way leaves its temp files; they never look like blobs or indexes
    (store.blobs_dir / ".tmp-crashed").write_bytes(b"half a layer")
    (store.layout("churn") / ".tmp-index").write_text('{"manifests": [')

    second = store.write_image("churn", "v2", model_dir, {"k": "v"})

    assert store.tags("churn") == {"v1": first.digest, "v2": second.digest}
    assert store.repos() == ["churn"]
    assert len(blob_files(store)) == 4  # shared layer and config, two manifests
    store.verify(second.digest)
    assert store.clean_temp(older_than=3600) == 0  # a live writer's temp files are kept
    assert store.clean_temp(older_than=0) == 2
    assert not (store.blobs_dir / ".tmp-crashed").exists()
    assert store.tags("churn") == {"v1": first.digest, "v2": second.digest}


def test_a_model_folder_with_a_socket_or_missing_folder_is_refused(
    store: OCIStore, tmp_path: Path
) -> None:
    with pytest.raises(ArtifactError, match="not a folder"):
        store.write_image("churn", "v1", tmp_path / "nope", {})
    folder = tmp_path / "m"
    folder.mkdir()
    os.mkfifo(folder / "pipe")
    with pytest.raises(ArtifactError, match="only regular files and folders"):
        store.write_image("churn", "v1", folder, {})
    assert list(store.blobs_dir.iterdir()) == []
