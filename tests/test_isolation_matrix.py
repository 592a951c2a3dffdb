"""The isolation matrix: every API endpoint x every role x own tenant / other tenant / no token.

Two tenants share one workspace: `default` (model-0, model-2) and `acme` (model-1), each with
an open promotion request to prod. Each cell is one request with an expected status, derived
from the rules (tenancy.access): no or a bad token 401; another tenant's object 404 (never
403); a role too low 403; otherwise allowed. A denied write must change nothing stored, and
no answer may carry another tenant's model, run, request or token.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_api_write import state, token_workspace
from test_promote import trained_copy

from modelworks import _git
from modelworks.api import create_app
from modelworks.apply import apply
from modelworks.gitops.promote import promote
from modelworks.registry.queries import runs
from modelworks.registry.store import Store
from modelworks.runs.executor import InlineExecutor
from modelworks.security.tokens import create_token
from modelworks.security.users import add_user
from modelworks.testing import AppClient, make_workspace, small_fleet, write_spec
from modelworks.workspace import CONFIG_FILE, Workspace

RANK = {"viewer": 0, "developer": 1, "approver": 2, "admin": 3}
# who -> (tenant, role); "root" is the platform admin (admin of the default tenant).
WHO = {
    "root": ("default", "admin"),
    "vic": ("default", "viewer"),
    "dev": ("default", "developer"),
    "bob": ("default", "approver"),
    "avic": ("acme", "viewer"),
    "adev": ("acme", "developer"),
    "ann": ("acme", "approver"),
    "aadm": ("acme", "admin"),
}
CALLERS = [*WHO, None, "bad"]
# Bare names: the template deployed model-1 before it became acme's (its deploy folder is the
# default layout's), and a bare name resolves among the caller's visible tenants.
MODEL = {"default": "model-0", "acme": "model-1"}


@dataclass(frozen=True)
class Endpoint:
    """One endpoint: how to call it about tenant `t`'s object, and the rule it follows."""

    name: str
    method: str
    url: Callable[[dict[str, Any], str], str]
    role: str  # the lowest role allowed
    body: Callable[[dict[str, Any], str], Any] | None = None
    scoped: bool = True  # names an object of one tenant (else a listing or a global create)
    platform: bool = False  # only a platform admin
    role_first: bool = False  # the role is checked before the object is looked up


ENDPOINTS = [
    Endpoint("whoami", "GET", lambda o, t: "/whoami", "viewer", scoped=False),
    Endpoint("tenants", "GET", lambda o, t: "/tenants", "viewer", scoped=False),
    Endpoint("tenant", "GET", lambda o, t: f"/tenants/{t}", "viewer"),
    Endpoint("create-tenant", "POST", lambda o, t: "/tenants", "admin",
             lambda o, t: {"name": "newco", "settings": {}}, scoped=False, platform=True),
    Endpoint("models", "GET", lambda o, t: "/models", "viewer", scoped=False),
    Endpoint("model", "GET", lambda o, t: f"/models/{t}/{MODEL[t]}", "viewer"),
    Endpoint("version", "GET",
             lambda o, t: f"/models/{t}/{MODEL[t]}/versions/{o['versions'][t]}", "viewer"),
    Endpoint("runs", "GET", lambda o, t: "/runs", "viewer", scoped=False),
    Endpoint("run-log", "GET", lambda o, t: f"/runs/{o['runs'][t]}/log", "viewer"),
    Endpoint("drift", "GET", lambda o, t: "/drift", "viewer", scoped=False),
    Endpoint("audit", "GET", lambda o, t: "/audit", "viewer", scoped=False),
    Endpoint("tokens", "GET", lambda o, t: "/tokens", "admin", scoped=False),
    Endpoint("create-token", "POST", lambda o, t: "/tokens", "admin",
             lambda o, t: {"user": o["users"][t], "role": "viewer", "tenant": t}),
    Endpoint("revoke-token", "DELETE", lambda o, t: f"/tokens/{o['victims'][t]}", "admin",
             role_first=True),
    Endpoint("plan", "POST", lambda o, t: "/plan", "viewer",
             lambda o, t: {"models": [MODEL[t]]}, role_first=True),
    Endpoint("apply", "POST", lambda o, t: "/apply", "developer",
             lambda o, t: {"models": [MODEL[t]]}, role_first=True),
    Endpoint("promotions", "GET", lambda o, t: "/promotions", "viewer", scoped=False),
    Endpoint("open-promotion", "POST", lambda o, t: "/promotions", "developer",
             lambda o, t: {"models": [MODEL[t]], "to": "prod"}, role_first=True),
    Endpoint("promotion", "GET", lambda o, t: f"/promotions/{o['requests'][t]}", "viewer"),
    Endpoint("approve", "POST", lambda o, t: f"/promotions/{o['requests'][t]}/approve",
             "approver", lambda o, t: {}),
    Endpoint("reject", "POST", lambda o, t: f"/promotions/{o['requests'][t]}/reject",
             "approver", lambda o, t: {"reason": "not now"}),
    Endpoint("rollback", "POST", lambda o, t: "/rollbacks", "approver",
             lambda o, t: {"model": MODEL[t], "env": "prod"}),
]  # fmt: skip
DENIED = (401, 403, 404)


def expected(ep: Endpoint, who: str | None, target: str) -> int | str:
    """The status a cell must get: 401, 403, 404, or "allowed" (anything but those)."""
    if who is None or who == "bad":
        return 401
    tenant, role = WHO[who]
    platform = who == "root"
    visible = platform or tenant == target
    low = RANK[role] < RANK[ep.role] or (ep.platform and not platform)
    if ep.scoped and not visible and not (ep.role_first and low):
        return 404
    if low:
        return 403
    return "allowed"


def _trained_on(url: str, root: Path) -> Workspace:
    """test_promote's three-model fleet, trained and deployed to test, on the registry `url`."""
    ws = make_workspace(root, registry={"url": url})
    small_fleet(ws)
    write_spec(ws, "model-2", "data/set0/data.csv", model_hyperparameters={"C": 3.0})
    _git.commit(ws.root, ["models"], "model-2")
    store = Store(ws.registry_url)
    assert apply(ws, store, executor=InlineExecutor(), actor="line").ok
    store.close()
    return ws


@pytest.fixture
def world(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, registry_url: str
) -> dict[str, Any]:
    """The two-tenant world on SQLite (a copy of the trained template) or PostgreSQL."""
    if registry_url.startswith("sqlite"):
        ws = trained_copy(tmp_path, tmp_path_factory)
    else:
        ws = _trained_on(registry_url, tmp_path / "ws")
    tokens = token_workspace(ws)
    cfg = yaml.safe_load((ws.root / CONFIG_FILE).read_text())
    cfg["tenants"] = {"default": {"data_roots": ["data"]}, "acme": {"data_roots": ["data"]}}
    (ws.root / CONFIG_FILE).write_text(yaml.safe_dump(cfg, sort_keys=False))
    _git.commit(ws.root, [CONFIG_FILE], "declare the tenants")
    ws = Workspace.load(ws.root)
    store = Store(ws.registry_url)
    add_user(store, "aadm", actor="root")
    tokens["aadm"] = create_token(store, user="aadm", role="admin", tenant="acme", actor="root")[
        "token"
    ]
    victims, users = {}, {}
    for t in ("default", "acme"):
        users[t] = f"victim-{t}"
        add_user(store, users[t], actor="root")
        victims[t] = create_token(store, user=users[t], role="viewer", tenant=t, actor="root")["id"]
    requests = {
        t: promote(ws, store, [MODEL[t]], to="prod", actor=f"author-{t}")["id"]
        for t in ("default", "acme")
    }
    run_ids = {t: runs(store, model=MODEL[t], limit=1)[0]["id"] for t in MODEL}
    versions = {}
    for t, name in MODEL.items():
        found = list((ws.root / "deploy/test").rglob(f"{name}/config.yaml"))
        versions[t] = yaml.safe_load(found[0].read_text())["version"]
    store.close()
    tokens["bad"] = "mw_" + "0" * 43
    return {"ws": ws, "tokens": tokens, "requests": requests, "runs": run_ids,
            "versions": versions, "victims": victims, "users": users}  # fmt: skip


def _leaks(body: Any, other: str, o: dict[str, Any]) -> list[str]:
    """What of tenant `other` the answer names: its model, run id, request id, token id."""
    text = json.dumps(body)
    found = []
    if f"{other}/{MODEL[other]}" in text or (other == "default" and '"model-0"' in text):
        found.append(MODEL[other])
    for key in ("requests", "victims"):
        if isinstance(body, dict):
            for item in next(iter(v for v in body.values() if isinstance(v, list)), []):
                if isinstance(item, dict) and item.get("id") == o[key][other]:
                    found.append(f"{key} {item['id']}")
    return found


def test_every_endpoint_role_and_tenant_gets_its_expected_status(world: dict[str, Any]) -> None:
    tokens, ws = world["tokens"], world["ws"]
    mismatches, leaks, changed = [], [], []
    cells = 0
    with AppClient(create_app(Workspace.load(ws.root))) as api:
        for ep in ENDPOINTS:
            for who in CALLERS:
                for target in ("default", "acme"):
                    if not ep.scoped and target == "acme":
                        continue  # a listing has no target: one cell per caller
                    cells += 1
                    want = expected(ep, who, target)
                    headers = {"Authorization": f"Bearer {tokens[who]}"} if who else {}
                    before = state(ws) if ep.method != "GET" and want != "allowed" else None
                    body = ep.body(world, target) if ep.body else None
                    r = api.request(ep.method, "/api/v1" + ep.url(world, target),
                                    json=body, headers=headers)  # fmt: skip
                    got = r.status_code
                    ok = got not in DENIED and got < 500 if want == "allowed" else got == want
                    if not ok:
                        mismatches.append(f"{ep.name} as {who} on {target}: {got} != {want} "
                                          f"{r.text[:160]}")  # fmt: skip
                    if got >= 400:
                        assert set(r.json()) == {"error"}, (ep.name, who, r.text)
                    if before is not None and state(ws) != before:
                        changed.append(f"{ep.name} as {who} on {target}")
                    if who in WHO and who != "root" and got < 300 and r.content:
                        tenant = WHO[who][0]
                        other = "acme" if tenant == "default" else "default"
                        found = _leaks(r.json(), other, world)
                        if found:
                            leaks.append(f"{ep.name} as {who}: {found}")
    assert not mismatches, "\n".join(mismatches)
    assert not changed, changed
    assert not leaks, leaks
    # 22 endpoints x 10 callers x (own, other) where an endpoint names an object: 350 cells
    assert cells == sum(len(CALLERS) * (2 if ep.scoped else 1) for ep in ENDPOINTS) == 350
