"""The control-plane API's read side: models (paged, filtered), show, versions, runs and logs,
drift, audit, tenants and tokens, each limited to what the caller's tenant may see."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_world import MODELS, Api

from modelworks.api.server import check_bind
from modelworks.errors import ConfigError
from modelworks.registry.models import Run
from modelworks.registry.queries import show, status
from modelworks.testing import mw_json
from modelworks.workspace import Workspace


@pytest.fixture
def api(tmp_path: Path, registry_url: str) -> Iterator[Api]:
    made = Api(tmp_path / "ws", registry_url)
    with made.client:
        yield made


def assert_error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    return dict(body["error"])


def all_pages(api: Api, who: str, query: str, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    url = f"/api/v1/models?limit={limit}{query}"
    cursor = None
    for _ in range(50):
        resp = api.get(who, url + (f"&cursor={cursor}" if cursor else ""))
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("paging did not end")


def test_without_a_token_every_read_is_401_in_the_one_shape(api: Api) -> None:
    for url in ["/api/v1/models", "/api/v1/runs", "/api/v1/tenants", "/api/v1/audit"]:
        err = assert_error(api.get(None, url), 401, "unauthenticated")
        assert "token" in err["message"].lower()


def test_paging_walks_every_visible_model_once_in_tenant_name_order(api: Api) -> None:
    items = all_pages(api, "root", "", limit=2)
    keys = [(r["tenant"], r["name"].split("/")[-1]) for r in items]
    assert keys == sorted(MODELS)
    rows = {r["name"]: r for r in status(api.store)}
    assert items == [rows[r["name"]] for r in items]  # each item is the `mw status --json` row


def test_a_tenant_sees_only_its_own_models_and_others_are_404(api: Api) -> None:
    seen = [r["name"] for r in all_pages(api, "vic", "", limit=100)]
    assert seen == ["acme/churn", "acme/fraud", "acme/ltv"]
    assert all_pages(api, "vic", "&tenant=globex", limit=10) == []
    assert_error(api.get("vic", "/api/v1/models/globex/churn"), 404, "not_found")
    assert_error(api.get("vic", "/api/v1/models/globex/nope"), 404, "not_found")
    mine = api.get("gus", "/api/v1/models/globex/churn")
    assert mine.status_code == 200
    assert mine.json()["tenant"] == "globex"


def test_filters_narrow_the_page(api: Api) -> None:
    def names(query: str) -> list[str]:
        return [r["name"] for r in all_pages(api, "root", query, 3)]

    assert names("&q=chur") == ["acme/churn", "globex/churn"]
    assert names("&tenant=acme&q=r") == ["acme/churn", "acme/fraud"]
    assert len(names("&env=test")) == len(MODELS)
    assert names("&env=prod") == []
    assert len(names("&status=registered&pipeline=tiny")) == len(MODELS)
    assert names("&status=gated") == []
    assert names("&q=%25") == []  # a LIKE wildcard is a literal character
    assert names("&q=_") == []
    assert names("&q=%C3%A9%20x") == []  # any printable text is a search, not an error


def test_show_and_version_are_what_mw_show_prints(api: Api) -> None:
    resp = api.get("vic", "/api/v1/models/acme/fraud")
    assert resp.status_code == 200
    assert resp.json() == show(api.store, "acme/fraud")
    version = resp.json()["versions"][0]
    one = api.get("vic", f"/api/v1/models/acme/fraud/versions/{version['version']}")
    assert one.json() == version
    assert_error(api.get("vic", "/api/v1/models/acme/fraud/versions/0000"), 404, "not_found")


def test_the_cli_json_is_unchanged_by_the_refactor(
    api: Api, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MW_TOKEN", api.tokens["root"])
    printed = mw_json(capsys, api.ws, "status")
    assert printed == {"models": status(api.store)}
    assert len(printed["models"]) == len(MODELS)
    runs = mw_json(capsys, api.ws, "runs", "--limit", "3")["runs"]
    assert runs == api.get("root", "/api/v1/runs?limit=3").json()["runs"]


def test_runs_page_by_id_and_the_log_is_bounded(api: Api, tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("start\n" + "x" * 5000 + "\nend\n")
    with api.store.session() as s:
        for r in s.query(Run).all():
            r.log_path = str(log)
    everything: list[int] = []
    cursor = ""
    while True:
        page = api.get("root", f"/api/v1/runs?limit=4{cursor}").json()
        everything += [r["id"] for r in page["runs"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert everything == sorted(everything, reverse=True)
    assert len(everything) == len(MODELS)
    acme = api.get("vic", "/api/v1/runs").json()["runs"]
    assert sorted(r["model"] for r in acme) == ["acme/churn", "acme/fraud", "acme/ltv"]
    run_id = acme[0]["id"]
    full = api.get("vic", f"/api/v1/runs/{run_id}/log").json()
    assert full["log"] == log.read_text()
    assert full["truncated"] is False
    tail = api.get("vic", f"/api/v1/runs/{run_id}/log?max_bytes=4").json()
    assert (tail["log"], tail["truncated"]) == ("end\n", True)
    assert_error(api.get("gus", f"/api/v1/runs/{run_id}/log"), 404, "not_found")


def test_tenants_are_listed_by_visibility_and_created_by_platform_admins(api: Api) -> None:
    assert [t["name"] for t in api.get("vic", "/api/v1/tenants").json()["tenants"]] == ["acme"]
    everyone = api.get("root", "/api/v1/tenants").json()["tenants"]
    assert [t["name"] for t in everyone] == ["acme", "globex"]
    assert_error(api.get("vic", "/api/v1/tenants/globex"), 404, "not_found")
    assert api.get("vic", "/api/v1/tenants/acme").json()["declared"] is True
    body = {"name": "initech", "settings": {"weight": 2}}
    assert_error(api.call("POST", "ann", "/api/v1/tenants", json=body), 403, "forbidden")
    made = api.call("POST", "root", "/api/v1/tenants", json=body)
    assert made.status_code == 201, made.text
    assert made.json()["settings"]["weight"] == 2
    assert api.get("root", "/api/v1/tenants/initech").json()["declared"] is False
    bad = {"name": "initech", "settings": {"weight": "heavy"}}
    err = assert_error(api.call("POST", "root", "/api/v1/tenants", json=bad), 400, "bad_request")
    assert "weight" in err["message"]
    nul = {"name": "initech", "settings": {"display_name": "a\u0000b"}}
    assert_error(api.call("POST", "root", "/api/v1/tenants", json=nul), 400, "bad_request")
    clash = {"name": "acme"}
    assert_error(api.call("POST", "root", "/api/v1/tenants", json=clash), 409, "conflict")


def test_tenant_admins_manage_only_their_own_tenants_tokens(api: Api) -> None:
    listed = api.get("ann", "/api/v1/tokens").json()["tokens"]
    assert {t["tenant"] for t in listed} == {"acme"}
    assert all("token" not in t and "hash" not in t for t in listed)
    assert len(api.get("root", "/api/v1/tokens").json()["tokens"]) == 4
    assert_error(api.get("vic", "/api/v1/tokens"), 403, "forbidden")
    body = {"user": "vic", "role": "developer", "tenant": "acme", "expires": "1d"}
    made = api.call("POST", "ann", "/api/v1/tokens", json=body)
    assert made.status_code == 201, made.text
    secret = made.json()["token"]
    assert secret.startswith("mw_")
    api.tokens["vic2"] = secret
    assert api.get("vic2", "/api/v1/whoami").json()["role"] == "developer"
    other = {**body, "tenant": "globex"}
    assert_error(api.call("POST", "ann", "/api/v1/tokens", json=other), 404, "not_found")
    globex_id = next(
        t["id"]
        for t in api.get("root", "/api/v1/tokens").json()["tokens"]
        if t["tenant"] == "globex"
    )
    assert_error(api.call("DELETE", "ann", f"/api/v1/tokens/{globex_id}"), 404, "not_found")
    revoked = api.call("DELETE", "ann", f"/api/v1/tokens/{made.json()['id']}")
    assert revoked.json()["state"] == "revoked"
    assert_error(api.get("vic2", "/api/v1/whoami"), 401, "unauthenticated")


def test_audit_and_drift_are_filtered_by_tenant(api: Api) -> None:
    root_events = api.get("root", "/api/v1/audit").json()["events"]
    assert {e["action"] for e in root_events} >= {"token.created"}
    acme = api.get("ann", "/api/v1/audit").json()["events"]
    assert acme
    assert {e["tenant"] for e in acme} == {"acme"}
    assert api.get("ann", "/api/v1/audit?tenant=globex").json() == {"events": []}
    last = api.get("root", "/api/v1/audit?limit=1&action=token.*").json()["events"]
    assert len(last) == 1
    assert last[0]["seq"] == max(e["seq"] for e in root_events)
    assert api.get("vic", "/api/v1/drift").json() == {"reports": []}


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/api/v1/models?limit=0", 422),
        ("/api/v1/models?limit=1001", 422),
        ("/api/v1/models?limit=abc", 422),
        ("/api/v1/models?cursor=%21%21%21", 400),
        ("/api/v1/models?cursor=bm90LWpzb24", 400),
        ("/api/v1/models?cursor=WzEsMl0", 400),
        ("/api/v1/models?tenant=Bad%20Name", 422),
        ("/api/v1/models/acme/..%2Fetc", 404),
        ("/api/v1/models/ACME/churn", 422),
        ("/api/v1/runs?cursor=-1", 400),
        ("/api/v1/runs?status=bogus", 422),
        ("/api/v1/runs/0/log", 422),
        ("/api/v1/runs/99999999999999999999999/log", 422),
        ("/api/v1/runs/5/log?max_bytes=0", 422),
        ("/api/v1/audit?action=%00", 422),
        ("/api/v1/audit?actor=a%00b", 422),
        ("/api/v1/models?q=a%00b", 422),
        ("/api/v1/models?q=%1b%5b31m", 422),
        ("/api/v1/nowhere", 404),
    ],
)
def test_hostile_input_is_a_4xx_in_the_one_shape(api: Api, url: str, status: int) -> None:
    resp = api.get("root", url)
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.status_code == status, resp.text
    assert set(resp.json()["error"]) == {"code", "message"}


def test_hostile_bodies_are_4xx(api: Api) -> None:
    for body in [b"{", b"[]", b'{"name": 5}', json.dumps({"name": "x" * 500}).encode()]:
        json_type = {"Content-Type": "application/json"}
        resp = api.call("POST", "root", "/api/v1/tenants", content=body, headers=json_type)
        assert resp.status_code == 422, resp.text
    huge = b'{"name": "' + b"a" * (2 * 2**20) + b'"}'
    resp = api.call("POST", "root", "/api/v1/tenants", content=huge)
    assert_error(resp, 413, "too_large")


def test_the_openapi_document_names_every_read_endpoint(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    paths = doc["paths"]
    for path in [
        "/api/v1/models",
        "/api/v1/models/{tenant}/{name}",
        "/api/v1/models/{tenant}/{name}/versions/{version}",
        "/api/v1/runs",
        "/api/v1/runs/{run_id}/log",
        "/api/v1/drift",
        "/api/v1/audit",
        "/api/v1/tenants",
        "/api/v1/tenants/{name}",
        "/api/v1/tokens",
        "/api/v1/tokens/{token_id}",
    ]:
        assert path in paths, path
    page = paths["/api/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]
    assert page["schema"]["$ref"].endswith("/ModelPage")


def test_local_mode_binds_to_loopback_only(workspace: Workspace) -> None:
    check_bind(workspace, "127.0.0.1")
    check_bind(workspace, "::1")
    with pytest.raises(ConfigError, match=r"--host 0\.0\.0\.0: auth.mode is local"):
        check_bind(workspace, "0.0.0.0")


def test_tenants_read_the_same_through_the_api_as_through_the_cli(
    api: Api, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MW_TOKEN", api.tokens["root"])
    listed = {t["name"]: t for t in mw_json(capsys, api.ws, "tenant", "list")["tenants"]}
    served = api.get("root", "/api/v1/tenants").json()["tenants"]
    assert served
    assert {t["name"] for t in served} <= set(listed)
    for t in served:
        assert {k: t[k] for k in listed[t["name"]]} == listed[t["name"]]
    shown = mw_json(capsys, api.ws, "tenant", "show", "acme")
    one = api.get("vic", "/api/v1/tenants/acme").json()
    assert {k: one[k] for k in shown} == shown
