"""Serving several tenants: per-tenant base paths, same-named models side by side, and a token
of one tenant getting the very 404 of a missing model for another tenant's (real HTTP, real
tokens)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from modelworks import _git
from modelworks.registry.store import Store
from modelworks.serving import create_app
from modelworks.testing import deploy_iris, make_workspace, serve_on_loopback
from modelworks.workspace import Workspace

_WORKSPACES: dict[str, Workspace] = {}
ROW = {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}
INFER = {"inputs": [ROW]}


def _tenant_config(ws: Workspace, cfg: Any, tenant: str) -> str:
    """Deploy `cfg` as `tenant`'s model of the same name (deploy/<env>/<tenant>/<model>/)."""
    rel = f"deploy/test/{tenant}/{cfg.name}/config.yaml"
    path = ws.deploy_repo / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.model_copy(update={"tenant": tenant}).to_yaml())
    return rel


def _tokens(store: Store) -> dict[str, str]:
    from modelworks.security.tokens import bootstrap_token, create_token
    from modelworks.security.users import add_user

    out = {"admin": bootstrap_token(store, user="root", actor="test")["token"]}
    for user, tenant, role in (("ann", "acme", "viewer"), ("gus", "globex", "admin")):
        add_user(store, user, actor="root")
        out[tenant] = create_token(store, user=user, role=role, tenant=tenant, actor="root")[
            "token"
        ]
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """Three `churn`s in `test`: the default tenant's (v2), acme's (v1) and globex's (v2)."""
    root: Path = tmp_path_factory.mktemp("tenants") / "ws"
    ws = make_workspace(root, serving={"auth": "token"})
    one = deploy_iris(ws, name="churn", version="1")
    two = deploy_iris(ws, name="churn", version="2")
    paths = [_tenant_config(ws, one, "acme"), _tenant_config(ws, two, "globex")]
    _git.commit(ws.deploy_repo, paths, "deploy churn for acme and globex")
    tokens = _tokens(Store(ws.registry_url))
    app = create_app(ws, "test", reconcile_in_background=False, sample_rate=0.0)
    with serve_on_loopback(app) as base:
        _WORKSPACES[base] = ws
        yield base, tokens


def _call(base: str, token: str, method: str, path: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    body = INFER if method == "POST" else None
    return httpx.request(method, base + path, headers=headers, json=body, timeout=30)


ROUTES = [
    ("POST", "/v2/models/churn/infer"),
    ("POST", "/v2/models/churn/versions/{v}/infer"),
    ("GET", "/v2/models/churn/ready"),
    ("GET", "/v2/models/churn/versions/{v}/ready"),
    ("GET", "/v2/models/churn"),
    ("GET", "/v2/models/churn/versions/{v}"),
]


@pytest.mark.parametrize(("method", "route"), ROUTES)
def test_each_tenant_reaches_its_own_churn(
    served: tuple[str, dict[str, str]], method: str, route: str
) -> None:
    base, tokens = served
    for tenant, version in (("acme", "1"), ("globex", "2")):
        path = f"/tenants/{tenant}" + route.format(v=version)
        for who in (tenant, "admin"):
            resp = _call(base, tokens[who], method, path)
            assert resp.status_code == 200, (who, path, resp.text)
            body = resp.json()
            if method == "POST":
                assert body["model_name"] == "churn"
                assert body["model_version"] == version
            elif route.endswith("ready"):
                assert body["ready"] is True
                assert body["version"] == version
            else:
                assert body["versions"] == [version]
    default = _call(base, tokens["admin"], method, route.format(v="2"))
    assert default.status_code == 200, default.text


@pytest.mark.parametrize(("method", "route"), ROUTES)
def test_another_tenants_model_is_a_plain_404(
    served: tuple[str, dict[str, str]], method: str, route: str
) -> None:
    base, tokens = served
    hidden = _call(base, tokens["acme"], method, "/tenants/globex" + route.format(v="2"))
    missing = _call(base, tokens["acme"], method, "/tenants/initech" + route.format(v="2"))
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == {"error": "model 'globex/churn' is not deployed in test."}
    assert hidden.json()["error"] == missing.json()["error"].replace("initech", "globex")
    assert hidden.headers["content-type"] == missing.headers["content-type"]
    # the default tenant's churn is another tenant's too for acme, and a qualified alias also
    bare = _call(base, tokens["acme"], method, route.format(v="2"))
    assert bare.status_code == 404
    assert bare.json() == {"error": "model 'churn' is not deployed in test."}
    alias = _call(base, tokens["acme"], method, route.replace("churn", "globex/churn", 1))
    assert alias.status_code == 404
    assert "globex/churn' is not deployed" in alias.json()["error"]


def test_a_typo_never_suggests_another_tenants_model(served: tuple[str, dict[str, str]]) -> None:
    base, tokens = served
    own = _call(base, tokens["acme"], "GET", "/tenants/acme/v2/models/chrun")
    assert own.status_code == 404
    assert "Did you mean 'acme/churn'?" in own.json()["error"]
    other = _call(base, tokens["acme"], "GET", "/tenants/globex/v2/models/chrun")
    assert other.json() == {"error": "model 'globex/chrun' is not deployed in test."}
    admin = _call(base, tokens["admin"], "GET", "/tenants/globex/v2/models/chrun")
    assert "Did you mean 'globex/churn'?" in admin.json()["error"]


def test_model_listings_show_only_visible_tenants(served: tuple[str, dict[str, str]]) -> None:
    base, tokens = served

    def names(token: str, path: str) -> list[tuple[str, str]]:
        resp = _call(base, token, "GET", path)
        assert resp.status_code == 200, resp.text
        return [(m["tenant"], m["name"]) for m in resp.json()["models"]]

    everyone = [("acme", "acme/churn"), ("default", "churn"), ("globex", "globex/churn")]
    assert names(tokens["admin"], "/v2/models") == everyone
    assert names(tokens["acme"], "/v2/models") == [("acme", "acme/churn")]
    assert names(tokens["acme"], "/tenants/acme/v2/models") == [("acme", "acme/churn")]
    assert names(tokens["acme"], "/tenants/globex/v2/models") == []
    assert names(tokens["admin"], "/tenants/globex/v2/models") == [("globex", "globex/churn")]


def test_tenant_base_path_health_is_open_and_the_rest_needs_a_token(
    served: tuple[str, dict[str, str]],
) -> None:
    base, _tokens = served
    assert httpx.get(base + "/tenants/acme/v2/health/live").json() == {"live": True}
    assert httpx.get(base + "/tenants/acme/v2/health/ready").status_code == 200
    assert httpx.get(base + "/tenants/acme/v2/models/churn").status_code == 401


def test_metrics_carry_the_tenant_and_hide_other_tenants(
    served: tuple[str, dict[str, str]],
) -> None:
    base, tokens = served
    for tenant in ("acme", "globex"):
        assert _call(base, tokens[tenant], "POST", f"/tenants/{tenant}/v2/models/churn/infer")
    admin = _call(base, tokens["admin"], "GET", "/metrics").text
    assert 'mw_serving_requests_total{model="churn",tenant="acme"}' in admin
    assert 'mw_serving_requests_total{model="churn",tenant="globex"}' in admin
    acme = _call(base, tokens["acme"], "GET", "/metrics").text
    assert 'mw_serving_requests_total{model="churn",tenant="acme"}' in acme
    assert 'tenant="globex"' not in acme
    assert "mw_serving_loaded_models" in acme


def test_reconcile_answers_name_only_the_callers_tenants(
    served: tuple[str, dict[str, str]],
) -> None:
    base, tokens = served
    ws = _WORKSPACES[base]
    extra = yaml.safe_load((ws.deploy_repo / "deploy/test/acme/churn/config.yaml").read_text())
    rel = "deploy/test/acme/extra/config.yaml"
    (ws.deploy_repo / rel).parent.mkdir(parents=True)
    (ws.deploy_repo / rel).write_text(yaml.safe_dump({**extra, "name": "extra"}))
    _git.commit(ws.deploy_repo, [rel], "acme/extra")
    hidden = _call(base, tokens["globex"], "POST", "/admin/reconcile")
    assert hidden.status_code == 200, hidden.text
    assert hidden.json()["added"] == []
    assert _call(base, tokens["acme"], "GET", "/tenants/acme/v2/models/extra").status_code == 200
    (ws.deploy_repo / rel).unlink()
    _git.commit(ws.deploy_repo, [rel], "no acme/extra")
    shown = _call(base, tokens["admin"], "POST", "/admin/reconcile")
    assert shown.json()["removed"] == ["acme/extra"]
    assert _call(base, tokens["acme"], "GET", "/tenants/acme/v2/models/extra").status_code == 404
