"""`oci.base_image`: ModelCars on a busybox layer KServe's modelcar sidecar can run."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from modelworks.apply import apply
from modelworks.artifacts.baselayer import BUSYBOX_PATHS, ROLE_ANNOTATION, base_layer
from modelworks.artifacts.oci import OCIStore
from modelworks.artifacts.sbom import environment_sbom, sbom_summary, validate_sbom, with_component
from modelworks.artifacts.verify import verify_version
from modelworks.errors import ArtifactError, SettingsError
from modelworks.registry.store import Store
from modelworks.runs.executor import InlineExecutor
from modelworks.testing import make_workspace, small_fleet
from modelworks.workspace import CONFIG_FILE, load_settings

BUSYBOX = next((p for p in BUSYBOX_PATHS if p.is_file()), None)
needs_busybox = pytest.mark.skipif(
    BUSYBOX is None, reason="needs Debian's busybox-static (apt-get install busybox-static)"
)
# What KServe's webhook runs in the modelcar sidecar ($$ is the shell's pid).
KSERVE_MODELCAR = "ln -s /proc/$$/root/models /mnt/models && sleep 0"


def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(b"weights")
    (folder / "metadata.json").write_text("{}")
    return folder


@needs_busybox
def test_the_layer_is_deterministic_and_holds_busybox_and_its_applets(tmp_path: Path) -> None:
    a = base_layer(OCIStore(tmp_path / "a"), "busybox")
    b = base_layer(OCIStore(tmp_path / "b"), None)  # the default is busybox
    assert a is not None
    assert b is not None
    assert a.digest == b.digest
    assert a.size == b.size
    data = OCIStore(tmp_path / "a").read_blob(a.digest)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == ["bin", "bin/busybox", "bin/ln", "bin/sh", "bin/sleep"]
    assert members["bin/busybox"].isfile()
    assert members["bin/busybox"].mode == 0o755
    for applet in ("ln", "sh", "sleep"):
        assert members[f"bin/{applet}"].issym()
        assert members[f"bin/{applet}"].linkname == "busybox"
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members.values()} == {
        (0, 0, 0, "", "")
    }


@needs_busybox
def test_the_layer_is_built_once_per_store_and_again_after_gc(tmp_path: Path) -> None:
    store = OCIStore(tmp_path / "oci")
    first = base_layer(store, "busybox")
    assert first is not None
    [record] = (store.root / "base").iterdir()
    blob = store.blob_path(first.digest)
    os.utime(blob, (1, 1))
    assert base_layer(store, "busybox") == first
    assert blob.stat().st_mtime > 1  # reused (and touched, so gc sees it in use)
    assert list((store.root / "base").iterdir()) == [record]
    blob.unlink()  # as `mw gc` does when no image references it
    assert base_layer(store, "busybox") == first
    assert blob.is_file()


@needs_busybox
def test_images_share_one_base_layer_and_read_like_model_only_ones(tmp_path: Path) -> None:
    store = OCIStore(tmp_path / "oci")
    base = base_layer(store, "busybox")
    refs = [
        store.write_image(name, "v1", model_dir(tmp_path / name), {"a": name}, base)
        for name in ("iris", "team-a/churn")
    ]
    layers = [store.manifest(r.digest)["layers"] for r in refs]
    assert layers[0][0] == layers[1][0] == {**base.descriptor()}  # type: ignore[union-attr]
    assert layers[0][0]["annotations"] == {ROLE_ANNOTATION: "base"}
    assert refs[0].digest != refs[1].digest
    for ref in refs:
        store.verify(ref.digest)
        assert store.read_file(ref.digest, "model.bin") == b"weights"
        out = store.extract(ref.digest, tmp_path / "x" / ref.repo)
        assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "model.bin"]
        info = json.loads(
            subprocess.run(
                ["skopeo", "inspect", ref.skopeo_ref], capture_output=True, text=True, check=True
            ).stdout
        )
        assert info["Layers"] == [ly["digest"] for ly in store.manifest(ref.digest)["layers"]]
        assert info["Env"] == ["PATH=/bin"]


@needs_busybox
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chroot") is None, reason="needs root")
def test_the_image_runs_kserves_modelcar_command(tmp_path: Path) -> None:
    store = OCIStore(tmp_path / "oci")
    ref = store.write_image("iris", "v1", model_dir(tmp_path), {}, base_layer(store, "busybox"))
    # Unpack what skopeo copies out, layer by layer, as a container runtime would.
    copied = tmp_path / "copied"
    subprocess.run(["skopeo", "copy", ref.skopeo_ref, f"dir:{copied}"], check=True)
    manifest = json.loads((copied / "manifest.json").read_text())
    rootfs = tmp_path / "rootfs"
    for layer in manifest["layers"]:
        with tarfile.open(copied / layer["digest"].split(":")[1]) as tar:
            tar.extractall(rootfs, filter="tar")
    (rootfs / "mnt").mkdir()
    proc = subprocess.run(
        ["chroot", str(rootfs), "sh", "-c", KSERVE_MODELCAR], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(rootfs / "mnt/models").endswith("/root/models")
    assert (rootfs / "models/model.bin").read_bytes() == b"weights"
    infinite = subprocess.run(["timeout", "0.5", "chroot", str(rootfs), "sleep", "infinity"])
    assert infinite.returncode == 124  # still sleeping when timeout stopped it


def test_none_keeps_model_only_images(tmp_path: Path) -> None:
    store = OCIStore(tmp_path / "oci")
    assert base_layer(store, "none") is None
    ref = store.write_image("iris", "v1", model_dir(tmp_path), {}, None)
    manifest = store.manifest(ref.digest)
    assert len(manifest["layers"]) == 1
    assert json.loads(store.read_blob(manifest["config"]["digest"]))["config"] == {}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: "alpine", "expected 'auto', 'busybox'"),
        (lambda d: d / "missing", "no such file"),
        (lambda d: d / "text", "is not an ELF executable"),
        (lambda d: Path(shutil.which("ls") or "/bin/ls"), "is dynamically linked"),
    ],
)
def test_a_base_that_cannot_run_in_the_image_is_refused(
    tmp_path: Path, make: object, message: str
) -> None:
    (tmp_path / "text").write_text("#!/bin/sh\n")
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(ArtifactError, match=message):
        base_layer(OCIStore(tmp_path / "oci"), str(path))


def test_a_bad_setting_names_the_field(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump({"oci": {"base_image": "alpine"}}))
    with pytest.raises(SettingsError, match=r"base_image.*expected 'auto', 'busybox'"):
        load_settings(tmp_path / CONFIG_FILE, environ={})
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump({"oci": {"base_image": "none"}}))
    assert load_settings(tmp_path / CONFIG_FILE, environ={}).oci.base_image == "none"
    (tmp_path / CONFIG_FILE).write_text("{}")
    assert load_settings(tmp_path / CONFIG_FILE, environ={}).oci.base_image == "auto"


@needs_busybox
def test_the_sbom_lists_the_base_layer(tmp_path: Path) -> None:
    base = base_layer(OCIStore(tmp_path / "oci"), "busybox")
    assert base is not None
    doc = with_component(environment_sbom(["packaging"]), base.component())
    validate_sbom(doc)
    [comp] = [c for c in doc["components"] if c["name"] == "busybox-static"]
    assert comp["purl"].startswith("pkg:deb/debian/busybox-static@")
    assert comp["hashes"][0]["content"] == base.binary_sha256
    assert sbom_summary(doc)["base_image"] == f"busybox-static {base.version}"


@needs_busybox
@pytest.mark.parametrize("setting", ["busybox", "none"])
def test_the_line_packages_signs_and_verifies_with_either_setting(
    tmp_path: Path, setting: str
) -> None:
    ws = make_workspace(tmp_path / "ws", oci={"base_image": setting})
    small_fleet(ws, models=1, datasets=1)
    store = Store(ws.registry_url)
    try:
        result = apply(ws, store, executor=InlineExecutor(), actor="line")
        assert result.ok, result.to_dict()
        info = verify_version(ws, store, "model-0")
    finally:
        store.close()
    oci = OCIStore(ws.oci_dir)
    layers = oci.manifest(info["digest"])["layers"]
    sbom = json.loads(oci.read_file(info["digest"], "sbom.json"))
    names = {c["name"] for c in sbom["components"]}
    if setting == "busybox":
        assert len(layers) == 2
        assert layers[0]["annotations"] == {ROLE_ANNOTATION: "base"}
        assert "busybox-static" in names
        assert info["checks"]["sbom"]["base_image"].startswith("busybox-static ")
    else:
        assert len(layers) == 1
        assert "busybox-static" not in names
    assert info["checks"]["signature"]["fingerprint"]


def test_auto_uses_a_static_busybox_when_installed_and_model_only_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from modelworks.artifacts import baselayer

    assert baselayer.effective_setting("none") == "none"
    assert baselayer.effective_setting("busybox") == "busybox"  # explicit: never downgraded
    if any(p.is_file() for p in baselayer.BUSYBOX_PATHS):
        assert baselayer.effective_setting("auto") == "busybox"
    dynamic = tmp_path / "busybox"
    dynamic.write_bytes(b"#!/bin/sh\necho not a static binary\n")
    for paths in ((tmp_path / "missing",), (dynamic,)):
        monkeypatch.setattr(baselayer, "BUSYBOX_PATHS", paths)
        with caplog.at_level("WARNING", logger="modelworks.artifacts"):
            assert baselayer.effective_setting("auto") == "none"
        assert "apt-get install busybox-static" in caplog.text
        caplog.clear()
