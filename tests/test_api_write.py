"""The control plane's write endpoints: plan, apply, promotions, rollbacks.

Each test runs the real app (in-process over ASGI) on a copy of a trained three-model
workspace (test_promote's template: three versions served in test, nothing in prod) in
`auth.mode: token`, with tokens of every role in the default tenant and in tenant `acme`,
which owns model-1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select, update
from test_promote import served, trained_copy

from modelworks import _git
from modelworks.api import create_app
from modelworks.apply import apply
from modelworks.registry.models import Approval, AuditEvent, Model, PromotionRequest, Run
from modelworks.registry.store import Store
from modelworks.runs.executor import InlineExecutor
from modelworks.security.tokens import bootstrap_token, create_token
from modelworks.security.users import add_user
from modelworks.testing import AppClient, mw_json
from modelworks.workspace import CONFIG_FILE, Workspace

ROLES = {"vic": "viewer", "dev": "developer", "carol": "developer", "bob": "approver"}
ACME = {"avic": "viewer", "adev": "developer", "ann": "approver"}


def token_workspace(ws: Workspace) -> dict[str, str]:
    """Switch `ws` to token mode, make model-1 acme's, and return a token per user."""
    cfg = yaml.safe_load((ws.root / CONFIG_FILE).read_text())
    cfg["auth"] = {"mode": "token"}
    (ws.root / CONFIG_FILE).write_text(yaml.safe_dump(cfg, sort_keys=False))
    spec = ws.models_dir / "model-1.json"
    spec.write_text(json.dumps({**json.loads(spec.read_text()), "tenant": "acme"}))
    _git.commit(ws.root, [CONFIG_FILE, spec], "token mode; model-1 belongs to acme")
    store = Store(ws.registry_url)
    with store.session() as s:
        s.execute(update(Model).where(Model.name == "model-1").values(tenant="acme"))
    tokens = {"root": bootstrap_token(store, user="root", actor="test")["token"]}
    for users, tenant in ((ROLES, "default"), (ACME, "acme")):
        for user, role in users.items():
            add_user(store, user, actor="root")
            made = create_token(store, user=user, role=role, tenant=tenant, actor="root")
            tokens[user] = made["token"]
    store.close()
    return tokens


@pytest.fixture
def ws(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return trained_copy(tmp_path, tmp_path_factory)


@pytest.fixture
def tokens(ws: Workspace) -> dict[str, str]:
    return token_workspace(ws)


@pytest.fixture
def api(ws: Workspace, tokens: dict[str, str]) -> Iterator[AppClient]:
    with AppClient(create_app(Workspace.load(ws.root))) as c:
        yield c


def call(api: AppClient, tokens: dict[str, str], who: str | None, method: str, url: str,
         body: Any = None) -> Any:  # fmt: skip
    headers = {"Authorization": f"Bearer {tokens[who]}"} if who else {}
    return api.request(method, f"/api/v1{url}", json=body, headers=headers)


def state(ws: Workspace) -> dict[str, Any]:
    """Everything a write could change: registry rows and the deploy repo's refs."""
    store = Store(ws.registry_url)
    with store.session() as s:
        counts = {
            t.__name__: s.scalar(select(func.count()).select_from(t))
            for t in (Run, PromotionRequest, Approval, AuditEvent)
        }
        states = dict(s.execute(select(PromotionRequest.id, PromotionRequest.state)).tuples().all())
    store.close()
    refs = _git.git(ws.deploy_repo, "for-each-ref", "--format=%(refname) %(objectname)")
    return {"counts": counts, "requests": states, "refs": refs}


def change(ws: Workspace, name: str, c: float) -> None:
    """Commit a new hyperparameter for `name` without applying it."""
    spec = ws.models_dir / f"{name}.json"
    spec.write_text(json.dumps({**json.loads(spec.read_text()), "model_hyperparameters": {"C": c}}))
    _git.commit(ws.root, [spec], f"retune {name}")


def test_plan_is_what_mw_plan_json_prints_and_each_tenant_sees_its_own(
    ws: Workspace, tokens: dict[str, str], api: AppClient, capsys: pytest.CaptureFixture[str]
) -> None:
    change(ws, "model-0", 5.0)
    before = state(ws)
    r = call(api, tokens, "root", "POST", "/plan", {})
    assert r.status_code == 200, r.text
    local = mw_json(capsys, ws, "plan", "--token", tokens["root"])
    assert r.json() == local
    assert [m["name"] for m in local["models"]] == ["model-0", "acme/model-1", "model-2"]
    ours = call(api, tokens, "vic", "POST", "/plan").json()
    assert [m["name"] for m in ours["models"]] == ["model-0", "model-2"]
    assert ours["summary"] == {"create": 0, "update": 1, "unchanged": 1, "error": 0}
    mine = call(api, tokens, "avic", "POST", "/plan").json()
    assert [m["name"] for m in mine["models"]] == ["acme/model-1"]
    assert mine["summary"] == {"create": 0, "update": 0, "unchanged": 1, "error": 0}
    # another tenant's model is the same 404 as one that does not exist
    other = call(api, tokens, "avic", "POST", "/plan", {"models": ["model-0"]})
    missing = call(api, tokens, "avic", "POST", "/plan", {"models": ["nope"]})
    assert other.status_code == missing.status_code == 404
    hint = " Did you mean 'acme/model-1'?"  # only visible names are offered
    assert other.json()["error"]["message"] == "no model spec named 'model-0'." + hint
    assert "model-0" not in missing.json()["error"]["message"]
    assert "model-2" not in missing.json()["error"]["message"]
    assert call(api, tokens, None, "POST", "/plan").status_code == 401
    assert state(ws) == before


def test_apply_queues_without_training_and_a_later_apply_runs_the_same_run(
    ws: Workspace, tokens: dict[str, str], api: AppClient
) -> None:
    change(ws, "model-0", 5.0)
    assert call(api, tokens, "vic", "POST", "/apply", {}).status_code == 403
    r = call(api, tokens, "dev", "POST", "/apply", {"models": ["model-0"]})
    assert r.status_code == 202, r.text
    out = r.json()
    assert (out["queued"], out["summary"]["update"], out["errors"]) == (1, 1, [])
    (run,) = out["runs"]
    assert (run["model"], run["status"], run["trigger"]) == ("model-0", "queued", "spec")
    store = Store(ws.registry_url)
    with store.session() as s:
        assert s.get(Run, run["id"]).status == "queued"  # nothing was trained
    again = call(api, tokens, "dev", "POST", "/apply", {}).json()
    assert (again["queued"], [x["id"] for x in again["runs"]]) == (0, [run["id"]])
    assert again["skipped"] == ["model-2"]  # model-1 is acme's: not planned for dev
    result = apply(ws, store, names=["model-0"], executor=InlineExecutor(), actor="line")
    assert [t["name"] for t in result.trained] == ["model-0"]
    with store.session() as s:
        assert s.get(Run, run["id"]).status == "succeeded"
        assert s.scalar(select(func.count()).select_from(Run).where(Run.status == "queued")) == 0


def test_a_running_controller_trains_what_apply_queued(
    ws: Workspace, tokens: dict[str, str], api: AppClient
) -> None:
    from modelworks.controller import repos
    from modelworks.controller.loop import Controller

    store = Store(ws.registry_url)
    ctl = Controller(Workspace.load(ws.root), store, executor=InlineExecutor(), lock_wait=1)
    ctl.tick()  # the first tick reconciles the whole workspace (nothing to train)
    change(ws, "model-2", 7.0)
    for repo in repos.workspace_repos(ctl.ws):  # the commit counts as seen: only the queue
        ctl.state.repos[repo.key] = repo.head()  # can make this tick train anything
    (run,) = call(api, tokens, "dev", "POST", "/apply", {}).json()["runs"]
    report = ctl.tick()
    assert report.errors == []
    assert [a["trained"] for a in report.applied] == [1]
    with store.session() as s:
        assert s.get(Run, run["id"]).status == "succeeded"


@pytest.mark.parametrize("breakage", ["removed", "unplannable"])
def test_a_queued_model_that_no_longer_plans_is_cancelled_once_not_retried_each_tick(
    ws: Workspace, tokens: dict[str, str], api: AppClient, breakage: str
) -> None:
    from modelworks.controller import repos
    from modelworks.controller.loop import Controller

    store = Store(ws.registry_url)
    ctl = Controller(Workspace.load(ws.root), store, executor=InlineExecutor(), lock_wait=1)
    ctl.tick()
    change(ws, "model-2", 7.0)
    (run,) = call(api, tokens, "dev", "POST", "/apply", {}).json()["runs"]
    spec = ws.models_dir / "model-2.json"
    if breakage == "removed":
        _git.git(ws.root, "rm", "-q", str(spec))
        _git.git(ws.root, "commit", "-qm", "remove model-2")
    else:
        broken = {**json.loads(spec.read_text()), "kubeflow_pipeline": "nowhere"}
        spec.write_text(json.dumps(broken))
        _git.commit(ws.root, [spec], "break model-2")
    for repo in repos.workspace_repos(ctl.ws):
        ctl.state.repos[repo.key] = repo.head()
    first = ctl.tick()
    with store.session() as s:
        cancelled = s.get(Run, run["id"])
        assert cancelled.status == "cancelled"
        assert ("removed" if breakage == "removed" else "nowhere") in (cancelled.error or "")
    assert first.stopped is False
    again = ctl.tick()
    assert again.applied == []
    assert again.errors == []


def test_promotion_flow_over_the_api_matches_the_cli_json(
    ws: Workspace, tokens: dict[str, str], api: AppClient, capsys: pytest.CaptureFixture[str]
) -> None:
    low = call(api, tokens, "vic", "POST", "/promotions", {"models": ["model-0"]})
    assert low.status_code == 403
    r = call(api, tokens, "dev", "POST", "/promotions", {"models": ["model-0", "model-2"]})
    assert r.status_code == 201, r.text
    req = r.json()
    assert (req["state"], req["author"], req["models"]) == ("open", "dev", 2)
    rid = req["id"]
    shown = call(api, tokens, "vic", "GET", f"/promotions/{rid}").json()
    root = ("--token", tokens["root"])
    assert shown == mw_json(capsys, ws, "promotion", str(rid), *root)
    listed = call(api, tokens, "vic", "GET", "/promotions?state=open").json()
    assert listed == mw_json(capsys, ws, "promotions", "--state", "open", *root)
    # the author cannot approve; an acme approver cannot even see it
    assert call(api, tokens, "dev", "POST", f"/promotions/{rid}/approve").status_code == 403
    before = state(ws)
    for verb in ("approve", "reject"):
        body = {"reason": "no"} if verb == "reject" else {}
        theirs = call(api, tokens, "ann", "POST", f"/promotions/{rid}/{verb}", body)
        assert theirs.status_code == 404, theirs.text
        assert theirs.json()["error"]["message"] == f"promotion request {rid} not found"
    assert call(api, tokens, "ann", "GET", f"/promotions/{rid}").status_code == 404
    assert call(api, tokens, "carol", "POST", f"/promotions/{rid}/approve").status_code == 403
    assert state(ws) == before
    merged = call(api, tokens, "bob", "POST", f"/promotions/{rid}/approve", {"comment": "ok"})
    assert merged.status_code == 200, merged.text
    assert (merged.json()["state"], merged.json()["approvals"]) == ("merged", ["bob"])
    assert served(ws, "prod", "model-0") == served(ws, "test", "model-0")
    again = call(api, tokens, "bob", "POST", f"/promotions/{rid}/reject", {"reason": "late"})
    assert again.status_code == 409


def test_each_tenant_promotes_only_its_own_models(
    ws: Workspace, tokens: dict[str, str], api: AppClient
) -> None:
    theirs = call(api, tokens, "adev", "POST", "/promotions", {"models": ["model-0"]})
    assert theirs.status_code == 404
    assert "model-0" in theirs.json()["error"]["message"]
    assert "model-2" not in theirs.json()["error"]["message"]  # no hint of default's models
    everything = call(api, tokens, "adev", "POST", "/promotions", {"all_changed": True}).json()
    assert [i["model"] for i in everything["items"]] == ["model-1"]
    assert everything["tenant"] == "acme"
    rid = everything["id"]
    assert call(api, tokens, "bob", "POST", f"/promotions/{rid}/approve").status_code == 404
    listed = call(api, tokens, "bob", "GET", "/promotions").json()["promotions"]
    assert rid not in [p["id"] for p in listed]
    done = call(api, tokens, "ann", "POST", f"/promotions/{rid}/approve").json()
    assert done["state"] == "merged"
    all_seen = call(api, tokens, "root", "GET", "/promotions").json()["promotions"]
    assert [p["id"] for p in all_seen] == [rid]


def test_rollback_needs_the_cli_roles_and_stays_in_its_tenant(
    ws: Workspace, tokens: dict[str, str], api: AppClient
) -> None:
    first = served(ws, "test", "model-0")
    change(ws, "model-0", 9.0)
    apply(ws, Store(ws.registry_url), names=["model-0"], executor=InlineExecutor(), actor="line")
    second = served(ws, "test", "model-0")
    assert second != first
    body = {"model": "model-0", "env": "test"}
    assert call(api, tokens, "vic", "POST", "/rollbacks", body).status_code == 403
    before = state(ws)
    other = call(api, tokens, "adev", "POST", "/rollbacks", body)
    missing = call(api, tokens, "adev", "POST", "/rollbacks", {**body, "model": "nope"})
    assert other.status_code == missing.status_code == 404
    assert other.json()["error"]["message"] == "model model-0 not found"
    assert state(ws) == before
    r = call(api, tokens, "dev", "POST", "/rollbacks", body)
    assert r.status_code == 201, r.text
    assert (r.json()["from"], r.json()["to"]) == (second, first)
    assert served(ws, "test", "model-0") == first
    # prod is gated: a rollback there needs an approver, as `mw rollback` does
    prod = call(api, tokens, "dev", "POST", "/rollbacks", {"model": "model-0", "env": "prod"})
    assert prod.status_code == 403


HOSTILE: list[tuple[str, str, Any]] = [
    ("POST", "/plan", {"models": ["../../etc/passwd"]}),
    ("POST", "/plan", {"models": ["a" * 300]}),
    ("POST", "/plan", {"models": ["m"] * 1001}),
    ("POST", "/plan", {"models": "model-0"}),
    ("POST", "/plan", {"unknown": 1}),
    ("POST", "/plan", [1, 2]),
    ("POST", "/apply", {"models": ["Model-0"]}),
    ("POST", "/apply", {"allow_dirty": "yes please"}),
    ("POST", "/apply", {"models": ["x\u0000y"]}),
    ("POST", "/promotions", {}),
    ("POST", "/promotions", {"models": ["model-0"], "to": "../prod"}),
    ("POST", "/promotions", {"models": ["model-0"], "to": "nowhere"}),
    ("POST", "/promotions", {"models": ["model-0"], "to": "test"}),
    ("POST", "/promotions", {"models": ["model-0"], "labels": ["no-equals"]}),
    ("POST", "/promotions", {"models": ["model-0"], "labels": ["k=v\u0000"]}),
    ("POST", "/promotions", {"all_changed": True, "labels": ["k=v"] * 21}),
    ("POST", "/promotions", {"models": ["ghost"]}),
    ("GET", "/promotions?state=bogus", None),
    ("GET", "/promotions/0", None),
    ("GET", "/promotions/99999999999999999999999", None),
    ("GET", "/promotions/abc", None),
    ("GET", "/promotions/424242", None),
    ("POST", "/promotions/424242/approve", {}),
    ("POST", "/promotions/1/approve", {"comment": "x" * 2001}),
    ("POST", "/promotions/1/approve", {"comment": "nul\u0000"}),
    ("POST", "/promotions/1/reject", {}),
    ("POST", "/promotions/1/reject", {"reason": ""}),
    ("POST", "/rollbacks", {"model": "model-0", "env": "test", "to": "'; drop table runs; --"}),
    ("POST", "/rollbacks", {"model": "model-0", "env": "test", "to": "0000000000"}),
    ("POST", "/rollbacks", {"model": "model-0", "env": "nowhere"}),
    ("POST", "/rollbacks", {"model": "acme/../x", "env": "test"}),
    ("POST", "/rollbacks", {"env": "test"}),
    ("POST", "/rollbacks", {"model": "model-0", "env": "prod"}),
]


def test_hostile_input_is_4xx_in_the_one_shape_and_changes_nothing(
    ws: Workspace, tokens: dict[str, str], api: AppClient
) -> None:
    opened = call(api, tokens, "dev", "POST", "/promotions", {"models": ["model-2"]}).json()
    assert opened["id"] == 1
    before = state(ws)
    for method, url, body in HOSTILE:
        for who in ("root", "bob"):
            r = call(api, tokens, who, method, url, body)
            assert 400 <= r.status_code < 500, (method, url, body, r.status_code, r.text)
            assert set(r.json()) == {"error"}, r.text
            assert set(r.json()["error"]) == {"code", "message"}
    headers = {"Authorization": f"Bearer {tokens['root']}", "Content-Type": "application/json"}
    raw = api.post("/api/v1/plan", content=b"{not json", headers=headers)
    assert raw.status_code == 422
    assert state(ws) == before


def test_apply_queues_while_a_controller_holds_the_workspace_lock(
    ws: Workspace, tokens: dict[str, str], api: AppClient
) -> None:
    from modelworks.apply import workspace_lock

    change(ws, "model-2", 8.0)
    lock = workspace_lock(ws, 0)  # an apply that is busy training
    try:
        r = call(api, tokens, "dev", "POST", "/apply", {"models": ["model-2"]})
    finally:
        lock.release()
    assert r.status_code == 202, r.text
    assert [run["model"] for run in r.json()["runs"]] == ["model-2"]


def test_the_write_endpoints_are_in_the_openapi_document(api: AppClient) -> None:
    doc = api.get("/openapi.json").json()
    paths = doc["paths"]
    assert set(paths["/api/v1/plan"]) == {"post"}
    assert set(paths["/api/v1/promotions"]) == {"get", "post"}
    assert set(paths["/api/v1/promotions/{request_id}/approve"]) == {"post"}
    assert set(paths["/api/v1/promotions/{request_id}/reject"]) == {"post"}
    assert set(paths["/api/v1/rollbacks"]) == {"post"}
    assert "from" in doc["components"]["schemas"]["PromoteBody"]["properties"]


def test_apply_queues_on_each_backend(tmp_path: Path, registry_url: str) -> None:
    from modelworks.testing import make_workspace, small_fleet

    fresh = make_workspace(tmp_path / "ws", registry={"url": registry_url})
    small_fleet(fresh)
    store = Store(fresh.registry_url)
    tokens = {"root": bootstrap_token(store, user="root", actor="test")["token"]}
    for user, role, tenant in (("dev", "developer", "default"), ("adev", "developer", "acme")):
        add_user(store, user, actor="root")
        tokens[user] = create_token(store, user=user, role=role, tenant=tenant, actor="root")[
            "token"
        ]
    with AppClient(create_app(Workspace.load(fresh.root))) as c:
        theirs = call(c, tokens, "adev", "POST", "/apply", {}).json()
        assert (theirs["queued"], theirs["runs"], theirs["summary"]["create"]) == (0, [], 0)
        first = call(c, tokens, "dev", "POST", "/apply", {}).json()
        assert first["queued"] == 3
        assert all(r["status"] == "queued" for r in first["runs"])
        again = call(c, tokens, "dev", "POST", "/apply", {}).json()
        assert again["queued"] == 0
        assert [r["id"] for r in again["runs"]] == [r["id"] for r in first["runs"]]
        before = state(fresh)
        for method, url, body in HOSTILE[:12]:
            r = call(c, tokens, "root", method, url, body)
            assert 400 <= r.status_code < 500, (url, body, r.text)
        assert state(fresh) == before
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(Run).where(Run.status == "queued")) == 3
    store.close()


def test_local_mode_acts_as_the_local_user_audited_as_unauthenticated(ws: Workspace) -> None:
    from modelworks.registry import audit

    with AppClient(create_app(ws)) as c:
        r = c.post("/api/v1/promotions", json={"models": ["model-0"]})
    assert r.status_code == 201, r.text
    author = r.json()["author"]
    (opened,) = [e for e in audit.rows(Store(ws.registry_url)) if e["action"] == "promotion.opened"]
    assert opened["actor"] == f"{author} (unauthenticated)"
