"""A deploy repository in the reference layout, unchanged: <env>/<model>/config.yaml at its
root with the five reference keys, as a separate repository and as a clone of a URL."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from oci_registry import run_registry

from modelworks import _deployrepo, _git
from modelworks.apply import apply
from modelworks.data.add import add
from modelworks.errors import ConfigError, SettingsError
from modelworks.gitops.deploy import (
    REFERENCE,
    REFERENCE_KEYS,
    DeployConfig,
    config_path,
    deploy,
    read_env,
)
from modelworks.gitops.export import export_argocd, export_kserve
from modelworks.gitops.promote import promote
from modelworks.gitops.rollback import history, rollback
from modelworks.registry.models import Model, ModelVersion
from modelworks.registry.store import Store
from modelworks.runs.executor import InlineExecutor
from modelworks.serving import create_app
from modelworks.serving.reconcile import read_desired
from modelworks.testing import (
    AppClient,
    make_workspace,
    write_dataset,
    write_pipeline,
    write_spec,
)
from modelworks.workspace import CONFIG_FILE, Workspace, load_settings

REGISTRY = "registry.example:5000"  # where no push happens
SPEC = "churn-predictor-model"
DEPLOYMENT = "churn-predictor"
_TEMPLATES: dict[str, Path] = {}


def _reference_repo(path: Path, bare: bool = False) -> Path:
    """A reference deploy repo: a chart folder and a config written by another system."""
    work = path if not bare else path.with_name(path.name + "-seed")
    _git.init(work)
    (work / "charts" / "modelcar").mkdir(parents=True)
    (work / "charts" / "modelcar" / "Chart.yaml").write_text("apiVersion: v2\nname: modelcar\n")
    foreign = work / "prod" / "legacy" / "config.yaml"
    foreign.parent.mkdir(parents=True)
    foreign.write_text(
        "chart_path: charts/modelcar\nname: legacy\nimage_repository: 127.0.0.1:9\n"
        "image_namespace: team\nversion: '7'\n"
    )
    _git.commit(work, ["charts", "prod"], "the reference deploy repo")
    if bare:
        subprocess.run(["git", "clone", "-q", "--bare", str(work), str(path)], check=True)
    return path


def _settings(deploy: str, registry: str, namespace: str) -> dict[str, Any]:
    return {
        "paths": {"deploy": deploy},
        "gitops": {"layout": "reference"},
        "oci": {"registry": registry, "namespace": namespace, "insecure": True},
        "environments": {
            "test": {"auto_deploy": True, "approvals": 0},
            "prod": {"auto_deploy": False, "approvals": 0},
        },
    }


def _build(root: Path, deploy: str, registry: str, namespace: str = "team") -> Workspace:
    """Train two specs with a reference deploy repo (one namespace per workspace: the
    versions are the same, the ModelCars' bytes are not)."""
    ws = make_workspace(root / "ws", **_settings(deploy, registry, namespace))
    write_pipeline(ws, commit=False)
    write_dataset(ws, "data/set0/data.csv")
    add(ws, ws.root / "data/set0/data.csv", commit=False)
    for name in (SPEC, "iris"):
        write_spec(ws, name, "data/set0/data.csv", commit=False)
    _git.commit(ws.root, ["models", "pipelines", "data"], "fleet")
    result = apply(ws, Store(ws.registry_url), executor=InlineExecutor(), actor="line")
    assert result.ok, result.to_dict()
    return ws


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One docker-registry on 127.0.0.1 for the module: apply pushes what it trains."""
    with run_registry(tmp_path_factory.mktemp("registry")) as address:
        yield address


def trained(tmp_path: Path, factory: pytest.TempPathFactory, registry: str) -> Workspace:
    """A copy of a trained workspace whose deploy repo is a separate reference repo."""
    if _TEMPLATES.get("registry") != Path(registry):
        root = factory.mktemp("reference")
        _reference_repo(root / "deploy")
        _build(root, "../deploy", registry)
        _TEMPLATES.update(path=root, registry=Path(registry))
    dest = tmp_path / "copy"
    shutil.copytree(_TEMPLATES["path"], dest, symlinks=True)
    return Workspace.load(dest / "ws")


@pytest.fixture
def ws(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, registry: str) -> Workspace:
    return trained(tmp_path, tmp_path_factory, registry)


def config_at(repo: Path, path: str, ref: str = "HEAD") -> dict[str, Any]:
    text = _git.show(repo, ref, path)
    assert text is not None, f"{path} not at {ref} in {repo}"
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def registered(ws: Workspace, name: str) -> list[ModelVersion]:
    store = Store(ws.registry_url)
    with store.session() as s:
        m = s.query(Model).filter_by(name=name).one()
        rows = list(s.query(ModelVersion).filter_by(model_id=m.id).order_by(ModelVersion.id))
    store.close()
    return rows


def retrain(ws: Workspace, c: float) -> str:
    spec = ws.models_dir / f"{SPEC}.json"
    data = json.loads(spec.read_text())
    data["model_hyperparameters"] = {"C": c}
    spec.write_text(json.dumps(data))
    _git.commit(ws.root, [spec], "retrain")
    result = apply(
        ws, Store(ws.registry_url), names=[SPEC], executor=InlineExecutor(), actor="line"
    )
    assert [t["name"] for t in result.trained] == [SPEC], result.to_dict()
    return str(result.trained[0]["version"])


# -- apply writes exactly the reference keys into the separate repository ---------------------


def test_apply_writes_the_five_reference_keys_and_commits_in_the_deploy_repo(
    ws: Workspace, registry: str
) -> None:
    repo = ws.deploy_repo
    assert repo.resolve() == ws.root.parent / "deploy"
    [v] = registered(ws, SPEC)
    cfg = config_at(repo, f"test/{DEPLOYMENT}/config.yaml")
    assert list(cfg) == list(REFERENCE_KEYS)
    assert cfg == {
        "chart_path": "charts/modelcar",
        "name": DEPLOYMENT,
        "image_repository": registry,
        "image_namespace": "team",
        "version": v.version,
    }
    assert list(config_at(repo, "test/iris/config.yaml")) == list(REFERENCE_KEYS)
    assert _git.git(repo, "log", "-1", "--format=%s").startswith("deploy: 2 model version(s)")
    assert _git.git(repo, "status", "--porcelain") == ""
    # the workspace repository holds no deploy configs
    assert not [p for p in _git.ls_files(ws.root, "HEAD", "") if p.endswith("config.yaml")]


def test_reading_resolves_digest_runtime_and_model_name_through_the_registry(
    ws: Workspace, registry: str
) -> None:
    [v] = registered(ws, SPEC)
    configs = read_env(ws.deploy_repo, "test")
    assert sorted(configs) == ["churn-predictor-model", "iris"]
    cfg = configs[SPEC]
    assert cfg.name == SPEC
    assert cfg.artifact_digest == v.artifact_digest
    assert cfg.artifact_digest
    assert cfg.runtime == "sklearn"
    assert cfg.fingerprint == v.fingerprint
    assert cfg.artifact_uri == f"oci://{registry}/team/{DEPLOYMENT}:{v.version}"
    # a config another system wrote, for a version the registry does not know, is read as is
    legacy = read_env(ws.deploy_repo, "prod")["legacy"]
    assert (legacy.name, legacy.version, legacy.artifact_digest) == ("legacy", "7", "")


def test_a_second_apply_rewrites_nothing(ws: Workspace) -> None:
    before = _git.head(ws.deploy_repo)
    result = apply(ws, Store(ws.registry_url), executor=InlineExecutor(), actor="line")
    assert result.ok
    assert result.deployed == []
    assert _git.head(ws.deploy_repo) == before


# -- promote, rollback, history ---------------------------------------------------------------


@pytest.mark.parametrize("name", [SPEC, DEPLOYMENT])
def test_promote_to_prod_writes_the_prod_config(ws: Workspace, name: str) -> None:
    store = Store(ws.registry_url)
    req = promote(ws, store, [name], to="prod", actor="alice")
    assert req["state"] == "merged"
    [item] = req["items"]
    assert item["path"] == f"prod/{DEPLOYMENT}/config.yaml"
    repo = ws.deploy_repo
    assert config_at(repo, f"prod/{DEPLOYMENT}/config.yaml") == config_at(
        repo, f"test/{DEPLOYMENT}/config.yaml"
    )
    assert sorted(_git.ls_files(repo, "HEAD", f"prod/{DEPLOYMENT}/")) == [
        f"prod/{DEPLOYMENT}/config.yaml"
    ]
    assert read_env(repo, "prod")[SPEC].artifact_digest == registered(ws, SPEC)[0].artifact_digest


def test_rollback_and_history_accept_either_name(ws: Workspace) -> None:
    store = Store(ws.registry_url)
    v1 = registered(ws, SPEC)[0].version
    v2 = retrain(ws, 0.05)
    path = f"test/{DEPLOYMENT}/config.yaml"
    assert config_at(ws.deploy_repo, path)["version"] == v2
    done = rollback(ws, store, DEPLOYMENT, env="test", actor="bob")
    assert (done["model"], done["from"], done["to"]) == (SPEC, v2, v1)
    cfg = config_at(ws.deploy_repo, path)
    assert cfg["version"] == v1
    assert list(cfg) == list(REFERENCE_KEYS)
    for name in (SPEC, DEPLOYMENT):
        rows = history(ws, name, env="test")
        assert [r["version"] for r in rows] == [v1, v2, v1]


# -- serve and export read it -----------------------------------------------------------------


def test_serve_answers_for_the_deployment_from_the_reference_repo(ws: Workspace) -> None:
    commit = _git.head(ws.deploy_repo)
    assert commit is not None
    desired = read_desired(ws.deploy_repo, "test", commit)
    assert desired[SPEC].artifact_digest == registered(ws, SPEC)[0].artifact_digest
    app = create_app(ws, "test", reconcile_in_background=False, sample_rate=0.0)
    with AppClient(app) as client:
        ready = client.get(f"/v2/models/{SPEC}/ready")
        assert ready.status_code == 200, ready.text
        out = client.infer(SPEC, np.zeros((2, 4)))
        assert out.status_code == 200, out.text
        assert len(out.json()["outputs"][0]["data"]) == 2


def test_export_argocd_and_kserve_read_the_reference_layout(
    ws: Workspace, tmp_path: Path, registry: str
) -> None:
    [appset] = export_argocd(
        ws.deploy_repo, tmp_path / "argo", repo_url="https://git.example/deploy.git", envs=["test"]
    )
    doc = yaml.safe_load(appset.read_text().split("\n", 1)[1])
    assert doc["spec"]["generators"][0]["git"]["files"] == [{"path": "test/**/config.yaml"}]
    paths = export_kserve(ws.deploy_repo, "test", tmp_path / "kserve", registry=registry)
    docs = {p.stem: yaml.safe_load(p.read_text().split("\n", 1)[1]) for p in paths}
    isvc = next(d for d in docs.values() if d["metadata"]["name"] == DEPLOYMENT)
    version = registered(ws, SPEC)[0].version
    uri = isvc["spec"]["predictor"]["model"]["storageUri"]
    assert uri == f"oci://{registry}/team/{DEPLOYMENT}:{version}"


# -- the -model mapping and hostile names -----------------------------------------------------


def test_the_model_suffix_mapping_is_the_reference_layouts_only() -> None:
    assert config_path("test", SPEC, layout=REFERENCE) == f"test/{DEPLOYMENT}/config.yaml"
    assert config_path("test", DEPLOYMENT, layout=REFERENCE) == f"test/{DEPLOYMENT}/config.yaml"
    assert config_path("test", "acme/x-model", layout=REFERENCE) == "test/acme/x/config.yaml"
    assert config_path("test", SPEC) == f"deploy/test/{SPEC}/config.yaml"
    assert config_path("test", "model", layout=REFERENCE) == "test/model/config.yaml"


def test_two_models_that_share_a_deployment_name_are_refused(ws: Workspace) -> None:
    def cfg(name: str) -> DeployConfig:
        return DeployConfig(name=name, image_repository=REGISTRY, image_namespace="t", version="1")

    before = _git.head(ws.deploy_repo)
    with pytest.raises(ConfigError, match=r"'x' and 'x-model' both deploy to test/x/config\.yaml"):
        deploy(ws.deploy_repo, "test", [cfg("x"), cfg("x-model")], "clash")
    assert _git.head(ws.deploy_repo) == before


@pytest.mark.parametrize("name", ["../etc", "a/../../b", "a/b/c", "/abs", "Upper", "a\\b", ""])
def test_hostile_model_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="model"):
        config_path("test", name, layout=REFERENCE)


@pytest.mark.parametrize("name", ["../etc", "a/../../b", "a/b/c", "/abs", "..", "a\\b"])
def test_hostile_names_are_refused_in_the_modelworks_layout_too(name: str) -> None:
    with pytest.raises(ConfigError, match="inside the deploy repository"):
        config_path("test", name)


@pytest.mark.parametrize("env", ["../x", "a/b", ".."])
def test_hostile_environment_names_are_refused(env: str) -> None:
    with pytest.raises(ConfigError, match="environment"):
        config_path(env, "churn", layout=REFERENCE)


def test_the_reference_layout_needs_an_oci_registry(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_FILE
    path.write_text("gitops:\n  layout: reference\n")
    with pytest.raises(SettingsError, match=r"gitops\.layout.*set oci\.registry"):
        load_settings(path, environ={})
    path.write_text("gitops:\n  layout: flat\n")
    with pytest.raises(SettingsError, match=r"field 'gitops\.layout'"):
        load_settings(path, environ={})


# -- paths.deploy as a URL: a clone, pulled before reading, pushed after writing -------------


def test_a_deploy_repo_named_by_url_is_cloned_pushed_and_pulled(
    tmp_path: Path, registry: str
) -> None:
    bare = _reference_repo(tmp_path / "remote.git", bare=True)
    ws = _build(tmp_path, f"file://{bare}", registry, namespace="url-team")
    clone = ws.deploy_repo
    assert clone == ws.state_dir / _deployrepo.CLONE_DIR
    # apply's deploy commit is on the remote
    remote_cfg = config_at(bare, f"test/{DEPLOYMENT}/config.yaml", "main")
    assert list(remote_cfg) == list(REFERENCE_KEYS)
    assert _git.head(bare, "main") == _git.head(clone)
    # promote moves main and pushes it
    req = promote(ws, Store(ws.registry_url), [DEPLOYMENT], to="prod", actor="alice")
    assert req["state"] == "merged"
    assert config_at(bare, f"prod/{DEPLOYMENT}/config.yaml", "main") == remote_cfg
    # someone else commits to the remote: the next workspace load pulls it before reading
    other = tmp_path / "other"
    subprocess.run(["git", "clone", "-q", str(bare), str(other)], check=True)
    (other / "test" / "iris" / "config.yaml").unlink()
    _git.commit(other, ["test/iris/config.yaml"], "retire iris")
    _git.git(other, "push", "-q", "origin", "main")
    assert "iris" in read_env(clone, "test")  # not pulled yet
    again = Workspace.load(ws.root)
    assert "iris" not in read_env(again.deploy_repo, "test")
    assert sorted(read_env(again.deploy_repo, "test")) == [SPEC]


def test_an_unreachable_deploy_url_is_a_clear_error(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    ws.settings.paths.deploy = f"file://{tmp_path}/missing.git"
    with pytest.raises(Exception, match=r"cannot clone the deploy repository file://"):
        _ = ws.deploy_repo


# -- push names exactly what the reference chart pulls ----------------------------------------


def test_pushed_modelcar_is_the_image_the_reference_chart_builds(
    ws: Workspace, registry: str
) -> None:
    oci_registry = registry
    [v] = registered(ws, SPEC)
    cfg = config_at(ws.deploy_repo, f"test/{DEPLOYMENT}/config.yaml")
    image = (
        f"oci://{cfg['image_repository']}/{cfg['image_namespace']}/{cfg['name']}:{cfg['version']}"
    )
    assert image == f"oci://{oci_registry}/team/{DEPLOYMENT}:{v.version}"
    assert v.pushed_uri == f"{oci_registry}/team/{DEPLOYMENT}:{v.version}"
    resp = httpx.get(
        f"http://{oci_registry}/v2/team/{DEPLOYMENT}/manifests/{v.version}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["Docker-Content-Digest"] == v.artifact_digest
    missing = httpx.get(f"http://{oci_registry}/v2/team/{SPEC}/manifests/{v.version}")
    assert missing.status_code == 404


def test_the_controller_pulls_a_deploy_url_each_tick_and_reconciles_what_moved(
    tmp_path: Path, registry: str
) -> None:
    from modelworks.controller.loop import Controller

    bare = _reference_repo(tmp_path / "remote.git", bare=True)
    ws = _build(tmp_path, f"file://{bare}", registry, namespace="ctl-team")
    reconciles: list[int] = []
    ctl = Controller(
        ws,
        Store(ws.registry_url),
        workers=1,
        lock_wait=0.2,
        on_deploy=[lambda: reconciles.append(1)],
    )
    ctl.tick()
    assert ctl.tick().changes == []
    other = tmp_path / "other"
    subprocess.run(["git", "clone", "-q", str(bare), str(other)], check=True)
    (other / "test" / "iris" / "config.yaml").unlink()
    _git.commit(other, ["test/iris/config.yaml"], "retire iris")
    _git.git(other, "push", "-q", "origin", "main")
    moved = ctl.tick()
    assert moved.changes[0]["parts"] == ["deploy"]
    assert moved.reconciled
    assert reconciles
    assert sorted(read_env(ws.deploy_repo, "test")) == [SPEC]


def test_a_gated_prod_takes_an_approval_and_serves_the_approved_config(ws: Workspace) -> None:
    from modelworks.gitops.attest import approved_env
    from modelworks.gitops.promote import approve

    ws.settings.environments["prod"].approvals = 1
    store = Store(ws.registry_url)
    req = promote(ws, store, [SPEC], to="prod", actor="alice")
    assert req["state"] == "open"
    approve(ws, store, req["id"], actor="bob")
    repo = ws.deploy_repo
    assert list(config_at(repo, f"prod/{DEPLOYMENT}/config.yaml")) == list(REFERENCE_KEYS)
    assert _git.show(repo, "HEAD", f"prod/{DEPLOYMENT}/approval.json")
    check = approved_env(ws, "prod", str(_git.head(repo)))
    assert [r.model for r in check.refused] == ["legacy"]  # another system's, unattested
    [cfg] = [c for c in check.configs.values() if c.name == SPEC]
    assert cfg.artifact_digest == registered(ws, SPEC)[0].artifact_digest


def test_fsck_reads_the_reference_layout(ws: Workspace) -> None:
    from modelworks.registry.fsck import check, deploy_configs_at_head

    assert sorted(deploy_configs_at_head(ws)) == [
        "prod/legacy/config.yaml",
        f"test/{DEPLOYMENT}/config.yaml",
        "test/iris/config.yaml",
    ]
    report = check(ws, Store(ws.registry_url))
    git_problems = [(p.kind, p.model) for p in report.problems if "git" in p.kind]
    assert git_problems == [("git-unregistered", "legacy")]  # another system's config only


def test_a_foreign_config_gets_its_digest_from_the_oci_registry(
    ws: Workspace, registry: str
) -> None:
    from modelworks.artifacts.oci import OCIStore
    from modelworks.artifacts.push import push
    from modelworks.registry.queries import layout_repo

    [v] = registered(ws, SPEC)
    oci = OCIStore(ws.oci_dir)
    image = oci.resolve(layout_repo(str(v.oci_layout)), str(v.artifact_ref))
    push(oci, image, registry, "elsewhere/foreign", "7", insecure=True)
    path = ws.deploy_repo / "test" / "foreign" / "config.yaml"
    path.parent.mkdir()
    path.write_text(
        f"chart_path: charts/modelcar\nname: foreign\nimage_repository: {registry}\n"
        "image_namespace: elsewhere\nversion: '7'\n"
    )
    _git.commit(ws.deploy_repo, ["test/foreign/config.yaml"], "another system deploys")
    cfg = read_env(ws.deploy_repo, "test")["foreign"]
    assert cfg.artifact_digest == image.digest
    assert cfg.artifact_uri == f"oci://{registry}/elsewhere/foreign:7"


def test_the_cli_reads_the_reference_repo_and_refuses_hostile_names(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelworks.testing import mw, mw_json

    body = mw_json(capsys, ws, "history", DEPLOYMENT, "--env", "test", "--json")
    assert [r["version"] for r in body["history"]] == [registered(ws, SPEC)[0].version]
    before = _git.head(ws.deploy_repo)
    for bad in ("../etc", "a/b/c", "Churn"):
        code, out, err = mw(capsys, ws, "rollback", bad, "--env", "test")
        assert code != 0
        assert "Traceback" not in out + err
        assert bad in err
    assert _git.head(ws.deploy_repo) == before


def test_a_tenants_model_lives_in_its_tenant_folder_and_reads_back_as_its_own(
    tmp_path: Path,
) -> None:
    _reference_repo(tmp_path / "deploy")
    ws = make_workspace(tmp_path / "ws", **_settings("../deploy", REGISTRY, "team"))
    cfg = DeployConfig(
        name="churn-model", image_repository=REGISTRY, image_namespace="acme", version="3"
    )
    cfg.tenant = "acme"
    assert deploy(ws.deploy_repo, "test", [cfg], "acme deploys") is not None
    text = _git.show(ws.deploy_repo, "HEAD", "test/acme/churn/config.yaml")
    assert text is not None
    assert "tenant" not in yaml.safe_load(text)
    [back] = read_env(ws.deploy_repo, "test").values()
    assert (back.tenant, back.name, back.qualified) == ("acme", "churn", "acme/churn")


def test_gc_keeps_what_the_reference_configs_deploy(ws: Workspace) -> None:
    from modelworks.artifacts.gc import deployed_digests

    digests = {v.artifact_digest for n in (SPEC, "iris") for v in registered(ws, n)}
    assert deployed_digests(ws) == digests


def test_the_modelworks_layout_still_needs_its_own_keys(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    path = ws.deploy_repo / "deploy" / "test" / "churn" / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(
        "chart_path: charts/modelcar\nname: churn\nimage_repository: r.io\n"
        "image_namespace: team\nversion: '1'\n"
    )
    _git.commit(ws.deploy_repo, ["deploy/test/churn/config.yaml"], "a reference config")
    with pytest.raises(ConfigError, match=r"churn/config\.yaml: missing key 'runtime'.*reference"):
        read_env(ws.deploy_repo, "test")


def test_fsck_repair_rebuilds_the_deployments_of_a_reference_repo(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelworks.testing import mw

    (ws.deploy_repo / "prod" / "legacy" / "config.yaml").unlink()  # fsck would name it
    _git.commit(ws.deploy_repo, ["prod/legacy/config.yaml"], "retire legacy")
    for side in ("registry.db-wal", "registry.db-shm"):
        (ws.state_dir / side).unlink(missing_ok=True)
    (ws.state_dir / "registry.db").write_bytes(b"")
    code, out, err = mw(capsys, ws, "fsck", "--repair", "--json")
    assert code == 0, out + err
    assert json.loads(out)["repaired"]["deployments"] == 2  # test: churn-predictor and iris
    assert read_env(ws.deploy_repo, "test")[SPEC].artifact_digest
