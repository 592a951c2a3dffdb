"""Publishing ModelCars of really trained versions to a real docker-registry on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from oci_registry import free_port, oci_registry
from sqlalchemy import select
from test_promote import retrain, served, trained_copy

from modelworks import _git
from modelworks.artifacts.publish import push_versions
from modelworks.cli import main
from modelworks.errors import ArtifactError, ConfigError, NotFoundError
from modelworks.gitops.promote import approve, promote
from modelworks.registry import audit
from modelworks.registry.models import Model, ModelVersion
from modelworks.registry.store import Store
from modelworks.workspace import CONFIG_FILE, OCISettings, Workspace

__all__ = ["oci_registry"]


@pytest.fixture
def ws(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return trained_copy(tmp_path, tmp_path_factory)


def use_registry(ws: Workspace, address: str) -> None:
    ws.settings.oci = OCISettings(registry=address, namespace="fleet", insecure=True)


def skopeo_inspect(ref: str) -> dict[str, object]:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo not installed")
    cmd = ["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def pushed_uris(store: Store) -> dict[str, str | None]:
    with store.session() as s:
        rows = s.execute(
            select(Model.name, ModelVersion.version, ModelVersion.pushed_uri).join(Model)
        )
        return {f"{n}:{v}": uri for n, v, uri in rows}


@pytest.mark.integration
def test_push_versions_is_read_by_skopeo_and_idempotent(ws: Workspace, oci_registry: str) -> None:
    use_registry(ws, oci_registry)
    store = Store(ws.registry_url)
    first = push_versions(ws, store, actor="ci")

    assert [(r["name"], r["status"]) for r in first] == [
        ("model-0", "pushed"),
        ("model-1", "pushed"),
        ("model-2", "pushed"),
    ]
    for r in first:
        version = served(ws, "test", r["name"])
        assert r["uri"] == f"{oci_registry}/fleet/{r['name']}:{version}"
        assert r["uploaded"] >= 2
        assert skopeo_inspect(r["uri"])["Digest"] == r["digest"]
        assert pushed_uris(store)[f"{r['name']}:{version}"] == r["uri"]
    assert [e["actor"] for e in audit.rows(store, action="version.pushed")] == ["ci"] * 3

    again = push_versions(ws, store)
    assert {r["status"] for r in again} == {"up-to-date"}
    assert sum(r["uploaded"] for r in again) == 0
    forced = push_versions(ws, store, force=True)
    assert {r["status"] for r in forced} == {"pushed"}
    assert sum(r["uploaded"] for r in forced) == 0  # every blob is already there
    assert all(
        r["skipped"] == f["uploaded"] + f["skipped"] for r, f in zip(forced, first, strict=True)
    )


@pytest.mark.integration
def test_served_and_latest_versions_are_pushed(ws: Workspace, oci_registry: str) -> None:
    use_registry(ws, oci_registry)
    store = Store(ws.registry_url)
    req = promote(ws, store, ["model-0"], actor="alice")
    approve(ws, store, req["id"], actor="bob")
    v1 = served(ws, "prod", "model-0")
    v2 = retrain(ws, "model-0", 0.05)  # apply pushes what it trains when a registry is set
    rows = push_versions(ws, store, ["model-0"])
    assert sorted(r["version"] for r in rows) == sorted([v1, v2])  # prod serves v1, test v2
    # apply already pushed both (prod's and test's versions of the model it retrained)
    assert {r["status"] for r in rows} == {"up-to-date"}
    again = push_versions(ws, store, ["model-0"], force=True)
    assert {r["status"] for r in again} == {"pushed"}
    assert all(r["uploaded"] == 0 for r in again)  # the registry already has every blob


@pytest.mark.integration
def test_a_missing_local_image_fails_alone(ws: Workspace, oci_registry: str) -> None:
    use_registry(ws, oci_registry)
    store = Store(ws.registry_url)
    shutil.rmtree(ws.oci_dir / "repos" / "model-1")
    rows = {r["name"]: r for r in push_versions(ws, store)}
    assert rows["model-1"]["status"] == "failed"
    assert "image 'model-1:" in rows["model-1"]["error"]
    assert rows["model-0"]["status"] == rows["model-2"]["status"] == "pushed"


@pytest.mark.integration
def test_mw_push_cli(ws: Workspace, oci_registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = yaml.safe_load((ws.root / CONFIG_FILE).read_text())
    cfg["oci"] = {"registry": oci_registry, "insecure": True}
    (ws.root / CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    _git.commit(ws.root, [CONFIG_FILE], "push to the local registry")
    main(["push", "model-2", "--json", "-C", str(ws.root)])
    (row,) = json.loads(capsys.readouterr().out)["pushed"]
    assert (row["name"], row["status"]) == ("model-2", "pushed")
    assert row["uri"].startswith(f"{oci_registry}/modelworks/model-2:")
    main(["push", "-C", str(ws.root)])
    out = capsys.readouterr().out
    assert "up-to-date" in out
    assert "Push: 3 ok, 0 failed." in out


def test_without_a_registry_or_with_nothing_listening(ws: Workspace) -> None:
    store = Store(ws.registry_url)
    with pytest.raises(ConfigError, match=r"no OCI registry configured: set oci\.registry"):
        push_versions(ws, store)
    use_registry(ws, f"127.0.0.1:{free_port()}")
    with pytest.raises(ArtifactError, match="cannot reach OCI registry"):
        push_versions(ws, store)
    with pytest.raises(NotFoundError, match="no model named 'model-7'"):
        push_versions(ws, store, ["model-7"])
    assert push_versions(ws, store, []) == []
    assert all(uri is None for uri in pushed_uris(store).values())
