"""Tenants on the spec paths: ownership, names unique per tenant, isolation, quotas, rows, CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from modelworks import _git
from modelworks.apply import apply
from modelworks.data.add import add
from modelworks.errors import ConflictError, NotFoundError
from modelworks.plan import plan
from modelworks.registry.models import Model, Tenant
from modelworks.registry.queries import get_model
from modelworks.registry.store import Store
from modelworks.testing import (
    make_workspace,
    mw,
    mw_json,
    write_dataset,
    write_pipeline,
    write_spec,
)
from modelworks.workspace import Workspace

TENANTS: dict[str, Any] = {
    "acme": {"display_name": "ACME Analytics", "weight": 2, "quotas": {"max_models": 5}},
    "globex": {"pipelines": ["tiny"], "environments": ["test"]},
}


def two_tenants(root: Path, tenants: dict[str, Any] | None = None, **settings: Any) -> Workspace:
    """acme/churn and globex/churn, each over its own data root, committed."""
    ws = make_workspace(root, tenants=tenants or TENANTS, **settings)
    write_pipeline(ws, commit=False)
    for tenant in ("acme", "globex"):
        write_dataset(ws, f"data/{tenant}/churn.csv", seed=len(tenant))
        add(ws, ws.root / f"data/{tenant}/churn.csv", commit=False)
        write_spec(ws, "churn", f"data/{tenant}/churn.csv", folder=tenant, commit=False)
    _git.commit(ws.root, ["models", "pipelines", "data"], "two tenants")
    return ws


def by_name(p: Any) -> dict[str, Any]:
    return {m.name: m for m in p.models}


def test_the_same_name_in_two_tenants_is_two_models(tmp_path: Path) -> None:
    ws = two_tenants(tmp_path)
    store = Store(ws.registry_url)
    models = by_name(plan(ws, store))
    assert set(models) == {"acme/churn", "globex/churn"}
    assert {m.action for m in models.values()} == {"create"}
    assert models["acme/churn"].to_dict()["tenant"] == "acme"


def test_folder_and_field_disagreeing_is_that_specs_error(tmp_path: Path) -> None:
    ws = two_tenants(tmp_path)
    write_spec(ws, "odd", "data/acme/churn.csv", folder="acme", tenant="globex")
    models = by_name(plan(ws, Store(ws.registry_url)))
    odd = models["acme/odd"]
    assert odd.action == "error"
    assert "models/acme/odd.json" in odd.reasons[0]
    assert "field 'tenant'" in odd.reasons[0]
    assert models["acme/churn"].action == "create"


def test_a_spec_under_no_declared_tenant_is_an_error_naming_the_file(tmp_path: Path) -> None:
    ws = two_tenants(tmp_path)
    write_spec(ws, "loose", "data/acme/churn.csv")
    write_spec(ws, "stray", "data/acme/churn.csv", folder="initech")
    models = by_name(plan(ws, Store(ws.registry_url)))
    assert models["loose"].action == "error"
    assert "models/loose.json: belongs to no tenant" in models["loose"].reasons[0]
    assert models["initech/stray"].action == "error"
    assert "models/initech/ is not a declared tenant" in models["initech/stray"].reasons[0]
    assert models["globex/churn"].action == "create"


def test_a_tenant_field_places_a_top_level_spec(tmp_path: Path) -> None:
    ws = two_tenants(tmp_path)
    write_spec(ws, "churn2", "data/globex/churn.csv", tenant="globex")
    assert by_name(plan(ws, Store(ws.registry_url)))["globex/churn2"].action == "create"


def test_a_name_clash_inside_one_tenant_is_only_that_tenants_error(tmp_path: Path) -> None:
    ws = two_tenants(tmp_path)
    path = write_spec(ws, "twin", "data/acme/churn.csv", folder="acme", commit=False)
    (path.parent / "sub").mkdir()
    (path.parent / "sub" / "twin.json").write_text(path.read_text())
    _git.commit(ws.root, ["models"], "clash")
    p = plan(ws, Store(ws.registry_url))
    errors = [m for m in p.models if m.action == "error"]
    assert len(errors) == 2
    assert all(m.name == "acme/twin" for m in errors)
    assert "declared twice in tenant 'acme'" in errors[0].reasons[0]
    assert by_name(p)["globex/churn"].action == "create"


def test_reading_another_tenants_data_is_refused_before_reading(tmp_path: Path) -> None:
    ws = two_tenants(tmp_path)
    write_spec(ws, "spy", "data/globex/churn.csv", folder="acme")
    spy = by_name(plan(ws, Store(ws.registry_url)))["acme/spy"]
    assert spy.action == "error"
    reason = spy.reasons[0]
    assert "models/acme/spy.json" in reason
    assert "field 'data_source.dataset'" in reason
    assert "tenant 'acme' may read only data/acme" in reason


def test_a_local_glob_outside_the_roots_is_refused(tmp_path: Path) -> None:
    ws = two_tenants(tmp_path)
    write_spec(ws, "glob", "x", folder="acme", data_source={"type": "local", "path": "data/**"})
    glob = by_name(plan(ws, Store(ws.registry_url)))["acme/glob"]
    assert glob.action == "error"
    assert "field 'data_source.path'" in glob.reasons[0]


def test_pipelines_and_environments_a_tenant_may_not_use(tmp_path: Path) -> None:
    ws = two_tenants(tmp_path)
    write_pipeline(ws, "other")
    write_spec(
        ws,
        "wide",
        "data/globex/churn.csv",
        folder="globex",
        pipeline="other",
        deploy={"environments": ["test", "prod"]},
    )
    reasons = by_name(plan(ws, Store(ws.registry_url)))["globex/wide"].reasons[0]
    assert "models/globex/wide.json" in reasons
    assert "field 'kubeflow_pipeline'" in reasons
    assert "(allowed: tiny)" in reasons
    assert "field 'deploy.environments'" in reasons
    assert "may not use prod (allowed: test)" in reasons


def test_over_max_models_the_models_past_the_limit_error(tmp_path: Path) -> None:
    tenants = {"acme": {"quotas": {"max_models": 2}}, "globex": {}}
    ws = two_tenants(tmp_path, tenants)
    for name in ("c-b", "c-a"):
        write_spec(ws, name, "data/acme/churn.csv", folder="acme")
    models = by_name(plan(ws, Store(ws.registry_url)))
    assert models["acme/c-a"].action == "create"
    assert models["acme/c-b"].action == "create"
    assert models["acme/churn"].action == "error"
    assert "max_models=2" in models["acme/churn"].reasons[0]
    assert "models/acme/churn.json" in models["acme/churn"].reasons[0]
    assert models["globex/churn"].action == "create"


def test_without_tenants_folders_are_not_tenants(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    write_pipeline(ws, commit=False)
    write_dataset(ws, "data/d.csv")
    add(ws, ws.root / "data/d.csv", commit=False)
    write_spec(ws, "nested", "data/d.csv", folder="team", commit=False)
    _git.commit(ws.root, ["models", "pipelines", "data"], "no tenants")
    (m,) = plan(ws, Store(ws.registry_url)).models
    assert (m.name, m.tenant, m.action) == ("nested", "default", "create")


@pytest.fixture
def applied(tmp_path: Path) -> Workspace:
    ws = two_tenants(tmp_path)
    result = apply(ws, Store(ws.registry_url), actor="tester")
    assert result.ok, result.to_dict()
    return ws


def test_apply_keeps_two_tenants_apart_in_registry_deploy_and_oci(applied: Workspace) -> None:
    ws, store = applied, Store(applied.registry_url)
    with store.session() as s:
        rows = {(m.tenant, m.name) for m in s.scalars(select(Model))}
        assert rows == {("acme", "churn"), ("globex", "churn")}
        assert get_model(s, "globex/churn").tenant == "globex"
        with pytest.raises(ConflictError, match="acme/churn, globex/churn"):
            get_model(s, "churn")
        with pytest.raises(NotFoundError):
            get_model(s, "initech/churn")
    for tenant in ("acme", "globex"):
        cfg = ws.deploy_repo / "deploy" / "test" / tenant / "churn" / "config.yaml"
        assert cfg.is_file()
        assert f"tenant: {tenant}" in cfg.read_text()
        assert (ws.oci_dir / "repos" / tenant / "churn" / "index.json").is_file()
    assert not (ws.deploy_repo / "deploy" / "test" / "churn").exists()
    again = apply(ws, store, actor="tester")
    assert sorted(again.skipped) == ["acme/churn", "globex/churn"]
    assert not again.trained


def test_declared_tenants_are_upserted_without_settings(applied: Workspace) -> None:
    store = Store(applied.registry_url)
    with store.session() as s:
        acme = s.get(Tenant, "acme")
        assert acme is not None
        assert (acme.display_name, acme.weight, acme.max_models) == ("ACME Analytics", 2, 5)
        assert acme.settings is None
        assert s.get(Tenant, "globex") is not None


def test_bare_names_resolve_to_the_only_tenant_having_one(applied: Workspace, capsys: Any) -> None:
    write_spec(applied, "solo", "data/globex/churn.csv", folder="globex")
    assert [m.name for m in plan(applied, Store(applied.registry_url), ["solo"]).models] == [
        "globex/solo"
    ]
    info = mw_json(capsys, applied, "show", "acme/churn")
    assert (info["name"], info["tenant"]) == ("acme/churn", "acme")
    code, _out, err = mw(capsys, applied, "show", "churn")
    assert code != 0
    assert "acme/churn" in err
    assert "globex/churn" in err


def test_artifact_bytes_quota_blocks_new_versions_once_used(applied: Workspace) -> None:
    ws = applied
    cfg = ws.root / "modelworks.yaml"
    text = cfg.read_text().replace("max_models: 5", "max_models: 5\n      max_artifact_bytes: 10")
    assert text != cfg.read_text()
    cfg.write_text(text)
    write_spec(ws, "more", "data/acme/churn.csv", folder="acme", commit=False)
    _git.commit(ws.root, ["modelworks.yaml", "models"], "quota")
    ws = Workspace.load(ws.root)
    models = by_name(plan(ws, Store(ws.registry_url)))
    assert models["acme/more"].action == "error"
    assert "max_artifact_bytes=10" in models["acme/more"].reasons[0]
    assert models["acme/churn"].action == "unchanged"


def test_tenant_list_and_show(applied: Workspace, capsys: Any) -> None:
    listed = mw_json(capsys, applied, "tenant", "list")["tenants"]
    assert [t["name"] for t in listed] == ["acme", "globex"]
    assert listed[0]["models"] == 1
    assert listed[0]["source"] == "file"
    assert listed[0]["quotas"]["max_models"] == 5
    shown = mw_json(capsys, applied, "tenant", "show", "acme")
    assert shown["data_roots"] == ["data/acme"]
    assert shown["oci_namespace"] == "acme"
    assert shown["usage"]["models"] == {"used": 1, "max": 5}
    assert shown["usage"]["artifact_bytes"]["used"] > 0
    assert shown["approvals"]["prod"] >= 1
    globex = mw_json(capsys, applied, "tenant", "show", "globex")
    assert globex["environments"] == ["test"]
    assert "prod" not in globex["approvals"]
    code, _out, err = mw(capsys, applied, "tenant", "show", "initech")
    assert code == NotFoundError.exit_code
    assert "tenant 'initech' not found" in err
    code, out, _err = mw(capsys, applied, "tenant", "list")
    assert code == 0
    assert "ACME Analytics" in out


def test_fsck_gc_and_promotion_see_tenant_models(applied: Workspace) -> None:
    from modelworks.artifacts.gc import collect
    from modelworks.gitops.approve import approve
    from modelworks.gitops.promote import promote
    from modelworks.registry.fsck import check

    ws, store = applied, Store(applied.registry_url)
    assert check(ws, store).problems == []
    report = collect(ws, store, dry_run=True)
    assert not [i for i in report.items if "churn" in str(i)]
    with pytest.raises(ConflictError, match="acme/churn, globex/churn"):
        promote(ws, store, ["churn"], to="prod", actor="dev")
    req = promote(ws, store, ["acme/churn"], to="prod", actor="dev")
    assert [i["model"] for i in req["items"]] == ["acme/churn"]
    assert req["items"][0]["path"] == "deploy/prod/acme/churn/config.yaml"
    assert approve(ws, store, req["id"], actor="ann")["state"] == "merged"
    served = ws.deploy_repo / "deploy" / "prod" / "acme" / "churn" / "config.yaml"
    assert served.is_file()
    assert not (ws.deploy_repo / "deploy" / "prod" / "globex").exists()


def test_two_tenants_on_each_registry_backend(tmp_path: Path, registry_url: str) -> None:
    ws = two_tenants(tmp_path / "ws", registry={"url": registry_url})
    store = Store(ws.registry_url)
    result = apply(ws, store, actor="tester")
    assert result.ok, result.to_dict()
    assert sorted(t["name"] for t in result.trained) == ["acme/churn", "globex/churn"]
    with store.session() as s:
        assert {(m.tenant, m.name) for m in s.scalars(select(Model))} == {
            ("acme", "churn"),
            ("globex", "churn"),
        }
        assert s.get(Tenant, "acme") is not None
    assert {m.action for m in plan(ws, store).models} == {"unchanged"}


def test_mw_plan_takes_qualified_names(tmp_path: Path, capsys: Any) -> None:
    ws = two_tenants(tmp_path)
    doc = mw_json(capsys, ws, "plan", "globex/churn")
    assert [(m["name"], m["tenant"]) for m in doc["models"]] == [("globex/churn", "globex")]
    code, _out, err = mw(capsys, ws, "plan", "churn")
    assert code != 0
    assert "acme/churn, globex/churn" in err
    code, _out, err = mw(capsys, ws, "plan", "initech/churn")
    assert code == NotFoundError.exit_code
    assert "initech/churn" in err


def test_declared_data_roots_replace_the_default(tmp_path: Path) -> None:
    tenants = {"acme": {"data_roots": ["shared/acme"]}, "globex": {}}
    ws = two_tenants(tmp_path, tenants)
    write_dataset(ws, "shared/acme/more.csv")
    add(ws, ws.root / "shared/acme/more.csv", commit=False)
    write_spec(ws, "more", "shared/acme/more.csv", folder="acme", commit=False)
    _git.commit(ws.root, ["models", "shared"], "shared data")
    models = by_name(plan(ws, Store(ws.registry_url)))
    assert models["acme/more"].action == "create"
    assert models["acme/churn"].action == "error"
    assert "may read only shared/acme" in models["acme/churn"].reasons[0]


def test_mw_verify_and_runs_take_tenant_models(applied: Workspace, capsys: Any) -> None:
    code, _out, err = mw(capsys, applied, "verify", "globex/churn")
    assert code == 0, err
    runs = mw_json(capsys, applied, "runs", "--model", "acme/churn")
    rows = runs if isinstance(runs, list) else runs["runs"]
    assert [(r["model"], r["tenant"]) for r in rows] == [("acme/churn", "acme")]
