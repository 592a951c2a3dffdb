"""Tenant isolation on promotions, approvals and the CLI's read paths: real trained workspace
(git + SQLite), real tokens, the real `mw` in-process.

The fleet of test_promote (model-0..2 served in test) is split between two declared tenants,
as the tenants' deploy layout has them: acme owns model-0 and model-2 (under
deploy/<env>/acme/), globex owns model-1 (under deploy/<env>/globex/). acme needs two
approvals in prod (tightening the workspace's one); globex asks for zero, which cannot loosen.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select, update
from test_promote import trained_copy

from modelworks import _git
from modelworks.errors import ConfigError, NotFoundError
from modelworks.gitops.promote import approve, get_promotion, list_promotions, promote, reject
from modelworks.gitops.rollback import history, rollback
from modelworks.registry import audit
from modelworks.registry.models import Approval, AuditEvent, Model, PromotionRequest
from modelworks.registry.queries import run_log, runs, show, status
from modelworks.registry.store import Store
from modelworks.testing import mw, mw_json
from modelworks.workspace import CONFIG_FILE, Workspace

Capsys = pytest.CaptureFixture[str]
OWNERS = {"model-0": "acme", "model-1": "globex", "model-2": "acme"}
ACME, GLOBEX = frozenset({"acme"}), frozenset({"globex"})


def _split_tenants(ws: Workspace) -> None:
    """Declare acme and globex, token auth, and move each model to its tenant (registry and
    deploy folder), committed."""
    cfg = yaml.safe_load((ws.root / CONFIG_FILE).read_text())
    cfg["tenants"] = {"acme": {"approvals": {"prod": 2}}, "globex": {"approvals": {"prod": 0}}}
    cfg["auth"] = {"mode": "token"}
    (ws.root / CONFIG_FILE).write_text(yaml.safe_dump(cfg, sort_keys=False))
    _git.commit(ws.root, [CONFIG_FILE], "tenants acme and globex, token auth")
    changed = []
    for model, tenant in OWNERS.items():
        old = ws.deploy_repo / "deploy" / "test" / model / "config.yaml"
        new = ws.deploy_repo / "deploy" / "test" / tenant / model / "config.yaml"
        data = yaml.safe_load(old.read_text())
        data["tenant"] = tenant
        new.parent.mkdir(parents=True)
        new.write_text(yaml.safe_dump(data, sort_keys=False))
        old.unlink()
        changed += [str(old.relative_to(ws.deploy_repo)), str(new.relative_to(ws.deploy_repo))]
    _git.commit(ws.deploy_repo, changed, "deploy folders per tenant")
    store = Store(ws.registry_url)
    with store.session() as s:
        for model, tenant in OWNERS.items():
            s.execute(update(Model).where(Model.name == model).values(tenant=tenant))
    store.close()


def _tokens(store: Store) -> dict[str, str]:
    from modelworks.security.tokens import bootstrap_token, create_token
    from modelworks.security.users import add_user

    out = {"root": bootstrap_token(store, user="root", actor="test")["token"]}
    for user, tenant, role in [
        ("ann", "acme", "developer"),
        ("abe", "acme", "approver"),
        ("amy", "acme", "approver"),
        ("gus", "globex", "developer"),
        ("gil", "globex", "admin"),
    ]:
        add_user(store, user, actor="root")
        made = create_token(store, user=user, role=role, tenant=tenant, actor="root")
        out[user] = made["token"]
    return out


@pytest.fixture
def ws(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = trained_copy(tmp_path, tmp_path_factory)
    _split_tenants(ws)
    return Workspace.load(ws.root)


@pytest.fixture
def store(ws: Workspace) -> Store:
    return Store(ws.registry_url)


@pytest.fixture
def tokens(store: Store) -> dict[str, str]:
    return _tokens(store)


def _as(capsys: Capsys, ws: Workspace, token: str, *args: str) -> tuple[int, str, str]:
    code, out, err = mw(capsys, ws, *args, "--token", token)
    return code, out, " ".join(err.split())


def _json_as(capsys: Capsys, ws: Workspace, token: str, *args: str) -> Any:
    return mw_json(capsys, ws, *args, "--token", token)


def _snapshot(ws: Workspace, store: Store) -> tuple[Any, ...]:
    """Everything an approve or reject could change: requests, approvals, audit, git refs."""
    with store.session() as s:
        reqs = [
            (r.id, r.state, r.merge_commit, r.closed_at)
            for r in s.scalars(select(PromotionRequest))
        ]
        approvals = [(a.request_id, a.actor, a.decision) for a in s.scalars(select(Approval))]
        events = s.scalar(select(func.count()).select_from(AuditEvent))
    refs = _git.git(ws.deploy_repo, "for-each-ref", "--format=%(refname) %(objectname)")
    return reqs, approvals, events, refs


# ---------------------------------------------------------------- promotions


def test_a_request_mixing_tenants_is_refused_and_nothing_is_stored(
    ws: Workspace, store: Store
) -> None:
    before = _snapshot(ws, store)
    with pytest.raises(ConfigError, match=r"belongs to one tenant.*acme: acme/model-0.*globex"):
        promote(ws, store, ["acme/model-0", "globex/model-1"], actor="root")
    with pytest.raises(ConfigError, match="promote each tenant's models separately"):
        promote(ws, store, all_changed=True, actor="root")
    assert _snapshot(ws, store) == before


def test_a_request_needs_its_tenants_approvals_which_only_tighten(
    ws: Workspace, store: Store
) -> None:
    acme = promote(ws, store, all_changed=True, tenant="acme", actor="ann")
    assert (acme["tenant"], acme["models"], acme["required_approvals"]) == ("acme", 2, 2)
    assert [i["model"] for i in acme["items"]] == ["acme/model-0", "acme/model-2"]
    assert acme["items"][0]["path"] == "deploy/prod/acme/model-0/config.yaml"
    globex = promote(ws, store, all_changed=True, actor="gus", tenants=GLOBEX)
    assert (globex["tenant"], globex["models"], globex["required_approvals"]) == ("globex", 1, 1)
    assert globex["state"] == "open"  # globex's 0 cannot loosen the workspace's 1


def test_a_member_cannot_promote_another_tenants_model(ws: Workspace, store: Store) -> None:
    with pytest.raises(NotFoundError) as hidden:
        promote(ws, store, ["acme/model-0"], actor="gus", tenants=GLOBEX)
    with pytest.raises(NotFoundError) as missing:
        promote(ws, store, ["acme/model-9"], actor="gus", tenants=GLOBEX)
    assert str(hidden.value) == str(missing.value).replace("model-9", "model-0")
    assert "acme/model-0" not in str(missing.value)


def test_another_tenants_approver_gets_not_found_and_changes_nothing(
    capsys: Capsys, ws: Workspace, store: Store, tokens: dict[str, str]
) -> None:
    req = promote(ws, store, ["acme/model-0"], actor="ann")
    before = _snapshot(ws, store)
    for args in (("approve", str(req["id"])), ("reject", str(req["id"]), "--reason", "no")):
        code, _out, err = _as(capsys, ws, tokens["gil"], *args)
        missing = _as(capsys, ws, tokens["gil"], args[0], "99", *args[2:])
        assert code == missing[0] != 0
        assert err == missing[2].replace("99", str(req["id"]))
        assert f"no promotion request {req['id']}" in err
    for call in (
        lambda: approve(ws, store, req["id"], actor="gil", tenants=GLOBEX),
        lambda: reject(ws, store, req["id"], actor="gil", reason="no", tenants=GLOBEX),
        lambda: get_promotion(store, req["id"], GLOBEX),
    ):
        with pytest.raises(NotFoundError, match=f"no promotion request {req['id']};"):
            call()
    assert _snapshot(ws, store) == before
    assert get_promotion(store, req["id"])["state"] == "open"


def test_own_tenants_approvers_merge_and_every_event_names_the_tenant(
    capsys: Capsys, ws: Workspace, store: Store, tokens: dict[str, str]
) -> None:
    code, out, err = _as(capsys, ws, tokens["ann"], "promote", "acme/model-0", "--json")
    assert code == 0, err
    rid = str(json.loads(out)["id"])
    first = _json_as(capsys, ws, tokens["abe"], "approve", rid)
    assert (first["state"], first["approvals"]) == ("open", ["abe"])
    merged = _json_as(capsys, ws, tokens["amy"], "approve", rid)
    assert merged["state"] == "merged"
    events = audit.rows(store, target=f"promotion/{rid}")
    assert [e["action"] for e in events] == [
        "promotion.opened",
        "promotion.approved",
        "promotion.approved",
        "promotion.merged",
    ]
    assert {e["tenant"] for e in events} == {"acme"}
    deployed = audit.rows(store, action="deployment", target="acme/model-0")
    assert [(e["tenant"], e["after"]["env"]) for e in deployed] == [("acme", "prod")]
    # and the rollback of it is acme's too
    other = promote(ws, store, ["globex/model-1"], actor="gus", tenants=GLOBEX)
    rejected = reject(ws, store, other["id"], actor="root", reason="not now")
    assert rejected["state"] == "rejected"
    assert audit.rows(store, action="promotion.rejected")[0]["tenant"] == "globex"


def test_promotion_listings_show_only_visible_tenants(
    capsys: Capsys, ws: Workspace, store: Store, tokens: dict[str, str]
) -> None:
    acme = promote(ws, store, ["acme/model-0"], actor="ann")
    globex = promote(ws, store, ["globex/model-1"], actor="gus")
    ids = lambda rows: [r["id"] for r in rows]  # noqa: E731
    assert ids(list_promotions(store)) == [globex["id"], acme["id"]]
    assert ids(list_promotions(store, tenants=ACME)) == [acme["id"]]
    assert ids(list_promotions(store, "open", GLOBEX)) == [globex["id"]]
    assert ids(_json_as(capsys, ws, tokens["gus"], "promotions")["promotions"]) == [globex["id"]]
    assert len(_json_as(capsys, ws, tokens["root"], "promotions")["promotions"]) == 2
    code, _out, err = _as(capsys, ws, tokens["gus"], "promotion", str(acme["id"]))
    assert code != 0
    assert f"no promotion request {acme['id']}; list them with `mw promotions`" in err


def test_rollback_of_another_tenants_model_is_not_found(
    ws: Workspace, store: Store, tokens: dict[str, str]
) -> None:
    head = _git.head(ws.deploy_repo, "HEAD")
    with pytest.raises(NotFoundError) as hidden:
        rollback(ws, store, "acme/model-0", env="test", actor="gil", tenants=GLOBEX)
    with pytest.raises(NotFoundError) as missing:
        rollback(ws, store, "acme/model-9", env="test", actor="gil", tenants=GLOBEX)
    assert str(hidden.value) == str(missing.value).replace("model-9", "model-0")
    assert _git.head(ws.deploy_repo, "HEAD") == head
    with pytest.raises(NotFoundError, match="no model named 'acme/model-0'"):
        history(ws, "acme/model-0", "test", store=store, tenants=GLOBEX)
    assert history(ws, "acme/model-0", "test", store=store, tenants=ACME)[0]["version"]


# ---------------------------------------------------------------- read paths


def test_library_reads_filter_by_tenants(store: Store) -> None:
    assert [r["name"] for r in status(store, GLOBEX)] == ["globex/model-1"]
    assert [r["name"] for r in status(store, ACME)] == ["acme/model-0", "acme/model-2"]
    assert len(status(store)) == 3
    assert {r["model"] for r in runs(store, tenants=ACME)} == {"acme/model-0", "acme/model-2"}
    assert show(store, "model-1", GLOBEX)["tenant"] == "globex"
    for call in (
        lambda name: show(store, name, GLOBEX),
        lambda name: runs(store, model=name, tenants=GLOBEX),
        lambda name: run_log(store, name, None, GLOBEX),
    ):
        with pytest.raises(NotFoundError) as hidden:
            call("model-0")
        with pytest.raises(NotFoundError) as missing:
            call("model-9")
        assert str(hidden.value) == str(missing.value).replace("model-9", "model-0")


def test_cli_reads_show_only_the_tokens_tenant(
    capsys: Capsys, ws: Workspace, store: Store, tokens: dict[str, str]
) -> None:
    gus = tokens["gus"]
    status_rows = _json_as(capsys, ws, gus, "status")["models"]
    assert [m["name"] for m in status_rows] == ["globex/model-1"]
    assert len(_json_as(capsys, ws, tokens["root"], "status")["models"]) == 3
    assert {r["model"] for r in _json_as(capsys, ws, gus, "runs")["runs"]} == {"globex/model-1"}
    assert _json_as(capsys, ws, gus, "show", "model-1")["tenant"] == "globex"
    for args in (("show", "{m}"), ("runs", "--model", "{m}"), ("logs", "{m}")):
        hidden = _as(capsys, ws, gus, *(a.format(m="model-0") for a in args))
        missing = _as(capsys, ws, gus, *(a.format(m="model-9") for a in args))
        assert hidden[0] == missing[0] != 0, args
        assert hidden[2] == missing[2].replace("model-9", "model-0"), args
    code, _out, err = _as(capsys, ws, gus, "history", "acme/model-0", "--env", "test")
    assert code != 0
    assert "no model named 'acme/model-0'" in err
    promote(ws, store, ["acme/model-0"], actor="ann")
    promote(ws, store, ["globex/model-1"], actor="gus")
    events = _json_as(capsys, ws, gus, "audit")["events"]
    assert {e["tenant"] for e in events} == {"globex"}
    targets = [e["target"] for e in events]
    assert "promotion/2" in targets
    assert "promotion/1" not in targets
    everything = _json_as(capsys, ws, tokens["root"], "audit")["events"]
    assert "acme" in {e["tenant"] for e in everything}


def test_mw_promote_refuses_mixed_tenants_and_takes_tenant(
    capsys: Capsys, ws: Workspace, store: Store, tokens: dict[str, str]
) -> None:
    code, _out, err = _as(capsys, ws, tokens["root"], "promote", "--all-changed")
    assert code != 0
    assert "a promotion request belongs to one tenant" in err
    assert "--tenant T" in err
    assert list_promotions(store) == []
    req = _json_as(capsys, ws, tokens["root"], "promote", "--all-changed", "--tenant", "globex")
    assert (req["tenant"], [i["model"] for i in req["items"]]) == ("globex", ["globex/model-1"])
    mine = _json_as(capsys, ws, tokens["ann"], "promote", "--all-changed")
    assert (mine["tenant"], mine["models"], mine["required_approvals"]) == ("acme", 2, 2)


def test_local_plan_and_apply_with_a_token_touch_only_its_tenant(
    capsys: Capsys, ws: Workspace, store: Store, tokens: dict[str, str]
) -> None:
    gus = tokens["gus"]  # a developer of globex, which owns model-1
    cfg = yaml.safe_load((ws.root / CONFIG_FILE).read_text())
    for t in ("acme", "globex"):
        cfg["tenants"][t]["data_roots"] = ["data"]  # the fleet's datasets are shared here
    (ws.root / CONFIG_FILE).write_text(yaml.safe_dump(cfg, sort_keys=False))
    specs = [CONFIG_FILE]
    for model, tenant in OWNERS.items():  # the specs say whose they are, as the registry does
        spec = ws.models_dir / f"{model}.json"
        spec.write_text(json.dumps({**json.loads(spec.read_text()), "tenant": tenant}))
        specs.append(str(spec.relative_to(ws.root)))
    _git.commit(ws.root, specs, "each spec names its tenant")
    planned = _json_as(capsys, ws, gus, "plan")
    assert [m["name"] for m in planned["models"]] == ["globex/model-1"]
    assert len(_json_as(capsys, ws, tokens["root"], "plan")["models"]) == 3
    hidden = _as(capsys, ws, gus, "plan", "acme/model-0")
    missing = _as(capsys, ws, gus, "plan", "acme/model-9")
    assert hidden[0] == missing[0] != 0
    assert hidden[2] == missing[2].replace("model-9", "model-0")
    before = {r["name"]: r["version"] for r in status(store)}
    code, _out, err = _as(capsys, ws, gus, "apply", "acme/model-0")
    assert "no model spec named" in err
    assert code != 0
    assert {r["name"]: r["version"] for r in status(store)} == before
