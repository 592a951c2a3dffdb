"""HTTP auth (`serving.auth: token`): the inference server and the controller's endpoints refuse
anonymous callers, check roles, and stay open on health; real tokens from the registry."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from modelworks.controller import Controller
from modelworks.controller.webhook import create_app as controller_app
from modelworks.controller.webhook import sign
from modelworks.registry.models import AuditEvent, Token
from modelworks.registry.store import Store
from modelworks.serving import create_app
from modelworks.serving.auth import controller_auth, is_loopback, serving_auth
from modelworks.testing import AppClient, deploy_iris, make_workspace, serve_on_loopback
from modelworks.workspace import Workspace

SECRET = "hook-secret-for-auth-tests"
GOOD = {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}
INFER = "/v2/models/iris/infer"


def _tokens(store: Store) -> dict[str, str]:
    from modelworks.security.tokens import bootstrap_token, create_token, revoke_token
    from modelworks.security.users import add_user

    root = bootstrap_token(store, user="root", actor="test")
    for name in ("vera", "ed", "rex"):
        add_user(store, name, actor="root")
    viewer = create_token(store, user="vera", role="viewer", actor="root")
    expired = create_token(store, user="ed", role="admin", actor="root")
    revoked = create_token(store, user="rex", role="admin", actor="root")
    with store.session() as s:
        row = s.get(Token, expired["id"])
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    revoke_token(store, revoked["id"], actor="root")
    return {
        "admin": root["token"],
        "viewer": viewer["token"],
        "expired": expired["token"],
        "revoked": revoked["token"],
    }


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict[str, str]]:
    root = tmp_path_factory.mktemp("auth") / "ws"
    ws = make_workspace(root, serving={"auth": "token"}, controller={"webhook_secret": SECRET})
    deploy_iris(ws)
    return ws, _tokens(Store(ws.registry_url))


@pytest.fixture(scope="module")
def client(secured: tuple[Workspace, dict[str, str]]) -> Iterator[AppClient]:
    app = create_app(secured[0], "test", reconcile_in_background=False, sample_rate=0.0)
    assert app.state.auth == "token"
    with AppClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def controller(secured: tuple[Workspace, dict[str, str]]) -> Iterator[tuple[AppClient, Any]]:
    ws = secured[0]
    ctl = Controller(ws, Store(ws.registry_url), workers=1, lock_wait=0.2)
    with AppClient(controller_app(ctl), base_url="http://ctl") as c:
        yield c, ctl


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refused(resp: Any, status: int, match: str) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body) == {"error"}, body
    assert match in body["error"], body["error"]
    if status == 401:
        assert resp.headers["www-authenticate"].startswith('Bearer realm="modelworks"')
    return str(body["error"])


def _infer(c: AppClient, **kw: Any) -> Any:
    return c.post(INFER, json={"inputs": [GOOD]}, **kw)


# -- the inference server ---------------------------------------------------------------------


def test_anonymous_infer_models_metrics_and_reconcile_get_401(client: AppClient) -> None:
    refused(_infer(client), 401, "missing Authorization header")
    refused(client.get("/v2/models"), 401, "missing Authorization header")
    refused(client.get("/metrics"), 401, "missing Authorization header")
    refused(client.post("/admin/reconcile"), 401, "missing Authorization header")
    refused(client.get("/v2/models/iris"), 401, "Authorization")
    refused(client.get("/v2/models/iris/ready"), 401, "Authorization")
    refused(client.get("/v2"), 401, "Authorization")
    refused(client.get("/no/such/route"), 401, "Authorization")  # no route map for strangers


def test_health_stays_open_in_token_mode(client: AppClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200


def test_a_viewer_token_infers_and_reads_but_cannot_reconcile(
    client: AppClient, secured: tuple[Workspace, dict[str, str]]
) -> None:
    auth = bearer(secured[1]["viewer"])
    r = _infer(client, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["model_name"] == "iris"
    assert [m["name"] for m in client.get("/v2/models", headers=auth).json()["models"]] == ["iris"]
    assert client.get("/v2/models/iris", headers=auth).json()["name"] == "iris"
    assert client.get("/v2/models/iris/ready", headers=auth).json()["ready"] is True
    assert "mw_serving_requests_total" in client.get("/metrics", headers=auth).text
    msg = refused(client.post("/admin/reconcile", headers=auth), 403, "vera has the viewer role")
    assert "needs admin" in msg
    assert "www-authenticate" not in client.post("/admin/reconcile", headers=auth).headers


def test_an_admin_token_reconciles(
    client: AppClient, secured: tuple[Workspace, dict[str, str]]
) -> None:
    r = client.post("/admin/reconcile", headers=bearer(secured[1]["admin"]))
    assert r.status_code == 200, r.text
    assert "commit" in r.json()


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ("Bearer mw_not-a-real-token", "unknown to this registry"),
        ("Bearer ", "must be 'Bearer <token>'"),
        ("Basic dXNlcjpwYXNz", "must be 'Bearer <token>'"),
        ("Bearer eyJhbGciOiJIUzI1NiJ9.e30.x", "auth.oidc is not configured"),
    ],
)
def test_bad_credentials_get_401(client: AppClient, header: str, match: str) -> None:
    resp = _infer(client, headers={"Authorization": header})
    refused(resp, 401, match)
    assert 'error="invalid_token"' in resp.headers["www-authenticate"]


@pytest.mark.parametrize(("which", "match"), [("expired", "expired at"), ("revoked", "revoked")])
def test_expired_and_revoked_tokens_get_401(
    client: AppClient, secured: tuple[Workspace, dict[str, str]], which: str, match: str
) -> None:
    refused(client.post("/admin/reconcile", headers=bearer(secured[1][which])), 401, match)


def test_refusals_are_counted_not_audited(
    client: AppClient, secured: tuple[Workspace, dict[str, str]]
) -> None:
    ws, tokens = secured
    store = Store(ws.registry_url)
    with store.session() as s:
        before = s.scalar(select(func.count()).select_from(AuditEvent))
    for _ in range(7):
        assert _infer(client).status_code == 401
    for _ in range(3):
        assert client.post("/admin/reconcile", headers=bearer(tokens["viewer"])).status_code == 403
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == before
    text = client.get("/metrics", headers=bearer(tokens["viewer"])).text
    counts = {
        line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mw_http_refused_requests_total{")
    }
    assert counts['reason="unauthenticated"'] >= 7
    assert counts['reason="forbidden"'] >= 3


def test_roles_hold_under_a_root_path(secured: tuple[Workspace, dict[str, str]]) -> None:
    ws, tokens = secured
    app = create_app(ws, "test", reconcile_in_background=False, sample_rate=0.0)
    with AppClient(app, root_path="/mw") as c:  # as behind a proxy that mounts it at /mw
        assert c.get("/mw/v2/health/live").status_code == 200
        viewer = bearer(tokens["viewer"])
        refused(c.post("/mw/admin/reconcile", headers=viewer), 403, "needs admin")
        assert c.post("/mw/admin/reconcile", headers=bearer(tokens["admin"])).status_code == 200


# -- the controller's endpoints ---------------------------------------------------------------


def test_controller_status_and_reconcile_need_tokens(
    controller: tuple[AppClient, Any], secured: tuple[Workspace, dict[str, str]]
) -> None:
    c, ctl = controller
    tokens = secured[1]
    refused(c.get("/api/status"), 401, "missing Authorization header")
    refused(c.get("/metrics"), 401, "missing Authorization header")
    refused(c.post("/api/reconcile"), 401, "missing Authorization header")
    refused(c.get("/api/status", headers=bearer(tokens["expired"])), 401, "expired at")
    status = c.get("/api/status", headers=bearer(tokens["viewer"]))
    assert status.status_code == 200, status.text
    assert "controller" in status.json()
    refused(c.post("/api/reconcile", headers=bearer(tokens["viewer"])), 403, "needs admin")
    assert not ctl.wake.is_set()
    assert c.post("/api/reconcile", headers=bearer(tokens["admin"])).status_code == 202
    assert ctl.wake.is_set()
    ctl.wake.clear()
    assert c.get("/healthz").status_code == 200  # health stays open


def test_the_webhook_keeps_its_hmac_and_needs_no_token(controller: tuple[AppClient, Any]) -> None:
    c, ctl = controller
    body = json.dumps({"ref": "refs/heads/main", "after": "c" * 40}).encode()
    assert c.post("/hooks/git", content=body).status_code == 401  # unsigned
    signed = {"X-Hub-Signature-256": sign(SECRET, body), "X-GitHub-Delivery": "auth-test-1"}
    r = c.post("/hooks/git", content=body, headers=signed)
    assert r.status_code == 202, r.text
    assert ctl.wake.is_set()
    ctl.wake.clear()


# -- which mode applies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("serving.example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_unset_auth_is_none_on_loopback_and_token_on_any_other_bind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ws = make_workspace(tmp_path / "ws")
    assert serving_auth(ws, "test", "127.0.0.1") == "none"
    assert controller_auth(ws, "localhost") == "none"
    with caplog.at_level(logging.INFO, logger="modelworks.serving"):
        assert serving_auth(ws, "test", "0.0.0.0") == "token"
    assert "is not a loopback address" in caplog.text
    assert controller_auth(ws, "10.0.0.5") == "token"


def test_an_explicit_none_is_obeyed_on_any_bind_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ws = make_workspace(tmp_path / "ws", serving={"auth": "none"})
    with caplog.at_level(logging.WARNING, logger="modelworks.serving"):
        assert serving_auth(ws, "test", "0.0.0.0") == "none"
    assert "without authentication" in caplog.text
    assert controller_auth(ws, "0.0.0.0") == "none"


def test_an_environment_can_require_tokens_on_its_own(tmp_path: Path) -> None:
    envs = {
        "test": {"auto_deploy": True, "approvals": 0},
        "prod": {"approvals": 1, "serving": {"auth": "token"}},
    }
    ws = make_workspace(tmp_path / "ws", serving={"auth": "none"}, environments=envs)
    assert serving_auth(ws, "test", "127.0.0.1") == "none"
    assert serving_auth(ws, "prod", "127.0.0.1") == "token"
    # the controller reports on every environment, so the strictest setting applies
    assert controller_auth(ws, "127.0.0.1") == "token"


def test_a_server_for_a_non_loopback_bind_refuses_anonymous_infer(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")  # serving.auth unset
    deploy_iris(ws)
    app = create_app(ws, "test", reconcile_in_background=False, sample_rate=0.0, host="0.0.0.0")
    assert app.state.auth == "token"
    with AppClient(app) as c:
        refused(_infer(c), 401, "missing Authorization header")
    loop = create_app(ws, "test", reconcile_in_background=False, sample_rate=0.0)
    assert loop.state.auth == "none"
    with AppClient(loop) as c:
        assert _infer(c).status_code == 200


# -- over a real uvicorn on loopback ----------------------------------------------------------


@pytest.mark.integration
def test_a_real_server_in_token_mode(secured: tuple[Workspace, dict[str, str]]) -> None:
    ws, tokens = secured
    app = create_app(ws, "test", reconcile_in_background=False, sample_rate=0.0)
    with serve_on_loopback(app) as base, httpx.Client(base_url=base, timeout=10) as http:
        anon = http.post(INFER, json={"inputs": [GOOD]})
        refused(anon, 401, "missing Authorization header")
        ok = http.post(INFER, json={"inputs": [GOOD]}, headers=bearer(tokens["viewer"]))
        assert ok.status_code == 200, ok.text
        refused(http.get("/metrics"), 401, "Authorization")
        refused(http.post("/admin/reconcile", headers=bearer(tokens["viewer"])), 403, "admin")
        assert http.post("/admin/reconcile", headers=bearer(tokens["admin"])).status_code == 200
        assert http.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize("ttl", [0.0, 0.5])
def test_a_revoked_token_stops_within_the_token_cache_window(tmp_path: Path, ttl: float) -> None:
    import time

    from modelworks.security.tokens import create_token, revoke_token

    ws = make_workspace(tmp_path / "ws", serving={"auth": "token", "token_cache_seconds": ttl})
    deploy_iris(ws)
    store = Store(ws.registry_url)
    admin = _tokens(store)["admin"]
    vera = create_token(store, user="vera", role="viewer", actor="root")
    app = create_app(ws, "test", reconcile_in_background=False, sample_rate=0.0)
    with AppClient(app) as c:
        assert _infer(c, headers=bearer(vera["token"])).status_code == 200
        revoke_token(store, vera["id"], actor="root")
        if ttl:
            # trusted for the window, then checked again
            assert _infer(c, headers=bearer(vera["token"])).status_code == 200
            time.sleep(ttl + 0.1)
        refused(_infer(c, headers=bearer(vera["token"])), 401, "revoked")
        assert _infer(c, headers=bearer(admin)).status_code == 200
        refused(c.post("/admin/reconcile", headers=bearer(vera["token"])), 401, "revoked")
