"""The HTTP edge under hostile input: one error shape, body caps, 400s not 500s, webhook replays.

Against the real apps in-process (httpx over ASGI) and a real uvicorn on loopback.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func
from sqlalchemy import select as sql_select

from modelworks.controller import Controller
from modelworks.controller.deliveries import remember
from modelworks.controller.webhook import create_app as controller_app
from modelworks.controller.webhook import sign
from modelworks.registry.models import AuditEvent, WebhookDelivery
from modelworks.registry.store import Store
from modelworks.serving import create_app
from modelworks.serving.protocol import DTYPES
from modelworks.testing import AppClient, deploy_iris, make_workspace, serve_on_loopback
from modelworks.workspace import Workspace

LIMIT = 1 << 20  # serving.max_body_bytes in these tests
HOOK_LIMIT = 64 << 10  # controller.max_body_bytes
SECRET = "hook-secret-for-tests"
GOOD = {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}
DEEP = "[" * 1000 + "]" * 1000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("http") / "ws"
    ws = make_workspace(root, serving={"max_body_bytes": LIMIT})
    deploy_iris(ws)
    return ws


@pytest.fixture(scope="module")
def client(served: Workspace) -> Iterator[AppClient]:
    app = create_app(served, "test", reconcile_in_background=False, sample_rate=0.0)
    with AppClient(app) as c:
        yield c


@pytest.fixture
def hooks(tmp_path: Path) -> Iterator[tuple[AppClient, Controller]]:
    ws = make_workspace(
        tmp_path / "ws", controller={"webhook_secret": SECRET, "max_body_bytes": HOOK_LIMIT}
    )
    ctl = Controller(ws, Store(ws.registry_url), workers=1, lock_wait=0.2)
    with AppClient(controller_app(ctl), base_url="http://ctl") as c:
        yield c, ctl


def assert_error_shape(resp: Any, status: int) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"], str)
    assert body["error"]
    return str(body["error"])


def infer(client: AppClient, body: bytes | str) -> Any:
    content = body.encode() if isinstance(body, str) else body
    return client.post("/v2/models/iris/infer", content=content)


def good_request_works(client: AppClient) -> None:
    r = infer(client, json.dumps({"inputs": [GOOD]}))
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["datatype"] == "INT64"


# -- one error shape --------------------------------------------------------------------------


def test_every_error_of_the_inference_server_has_the_one_json_shape(client: AppClient) -> None:
    assert "Not Found" in assert_error_shape(client.get("/nope"), 404)
    assert "not deployed" in assert_error_shape(client.post("/v2/models/irsi/infer"), 404)
    wrong = client.request("DELETE", "/v2/health/live")
    assert "Method Not Allowed" in assert_error_shape(wrong, 405)
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert "not valid JSON" in assert_error_shape(infer(client, b"{nope"), 400)
    big = infer(client, b"x" * (LIMIT + 1))
    assert "serving.max_body_bytes" in assert_error_shape(big, 413)
    assert big.headers["connection"] == "close"


def test_every_error_of_the_controller_endpoints_has_the_one_json_shape(
    hooks: tuple[AppClient, Controller],
) -> None:
    c, _ = hooks
    assert "Not Found" in assert_error_shape(c.get("/nope"), 404)
    assert "Method Not Allowed" in assert_error_shape(c.get("/hooks/git"), 405)
    assert "missing X-Hub-Signature-256" in assert_error_shape(c.post("/hooks/git"), 401)
    wrong = c.post("/hooks/git", content=b"{}", headers={"X-Hub-Signature-256": "sha256=00"})
    assert "does not match" in assert_error_shape(wrong, 403)
    big = c.post("/hooks/git", content=b"{" * (HOOK_LIMIT + 1))
    assert "controller.max_body_bytes" in assert_error_shape(big, 413)
    body = b"{}"
    odd_id = c.post(
        "/hooks/git",
        content=body,
        headers={"X-Hub-Signature-256": sign(SECRET, body), "X-GitHub-Delivery": "a b/../c"},
    )
    assert "X-GitHub-Delivery must be" in assert_error_shape(odd_id, 400)


# -- body caps --------------------------------------------------------------------------------


class Chunks:
    """An async request body that counts how much of it the server pulled."""

    def __init__(self, total: int, chunk: int = 64 << 10) -> None:
        self.total, self.chunk, self.pulled = total, chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < self.total:
            self.pulled += self.chunk
            yield b" " * self.chunk


def test_a_declared_200MB_body_is_refused_before_any_of_it_is_read(
    client: AppClient, hooks: tuple[AppClient, Controller]
) -> None:
    declared = {"Content-Length": str(200 * 2**20)}
    for c, url in ((client, "/v2/models/iris/infer"), (hooks[0], "/hooks/git")):
        body = Chunks(200 * 2**20)
        r = c.post(url, content=body, headers=declared)
        assert "209715200 bytes, over the limit" in assert_error_shape(r, 413)
        assert body.pulled == 0
    good_request_works(client)


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(client: AppClient) -> None:
    body = Chunks(32 * 2**20)  # no Content-Length: sent chunked
    r = client.post("/v2/models/iris/infer", content=body)
    assert f"more than {LIMIT} bytes" in assert_error_shape(r, 413)
    assert body.pulled <= LIMIT + body.chunk
    metrics = client.get("/metrics").text
    assert 'mw_http_refused_requests_total{reason="too_large"}' in metrics
    good_request_works(client)


def _raw_request(base: str, head: bytes, chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send `head` then `chunks` until the server answers; return (response, bytes of body sent)."""
    url = urlsplit(base)
    sent = 0
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(head)
        for chunk in chunks:
            readable, _, _ = select.select([s], [], [], 0)
            if readable:
                break
            try:
                s.sendall(chunk)
            except OSError:  # the server closed the connection: its answer is already here
                break
            sent += len(chunk)
        response = b""
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            if time.monotonic() > deadline:
                break
            data = s.recv(65536)
            if not data:
                break
            response += data
    return response, sent


def _status_and_body(response: bytes) -> tuple[int, dict[str, Any], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), head.lower()


@pytest.mark.integration
def test_a_real_server_refuses_oversized_bodies_without_reading_them(served: Workspace) -> None:
    app = create_app(served, "test", reconcile_in_background=False, sample_rate=0.0)
    with serve_on_loopback(app) as base:
        head = (
            b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: mw\r\n"
            b"Content-Type: application/json\r\nContent-Length: 209715200\r\n\r\n"
        )
        response, _ = _raw_request(base, head, iter([b'{"inputs": '] * 4))
        status, body, headers = _status_and_body(response)
        assert status == 413
        assert set(body) == {"error"}
        assert "209715200 bytes" in body["error"]
        assert b"connection: close" in headers

        head = (
            b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: mw\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        piece = b" " * (64 << 10)
        framed = b"%x\r\n" % len(piece) + piece + b"\r\n"
        response, sent = _raw_request(base, head, iter([framed] * 3200))  # 200 MiB
        status, body, _ = _status_and_body(response)
        assert status == 413
        assert f"more than {LIMIT} bytes" in body["error"]
        assert sent < 64 * 2**20  # the server stopped long before the 200 MiB were sent


# -- hostile bodies: 400, never 500 -----------------------------------------------------------


def _with(**fields: Any) -> str:
    return json.dumps({"inputs": [{**GOOD, **fields}]})


HOSTILE: dict[str, tuple[str | bytes, str]] = {
    "1000 deep": (DEEP, "deeper than 64 levels"),
    "1000 deep in inputs": ('{"inputs": ' + DEEP + "}", "deeper than 64 levels"),
    "1000 deep in parameters": (
        '{"inputs": [' + json.dumps(GOOD) + '], "parameters": ' + DEEP + "}",
        "deeper than 64 levels",
    ),
    "100000 deep": ("[" * 100_000 + "]" * 100_000, "request body"),
    "outputs 5": (json.dumps({"inputs": [GOOD], "outputs": 5}), "'outputs' must be a list"),
    "outputs [5]": (json.dumps({"inputs": [GOOD], "outputs": [5]}), "string 'name'"),
    "inputs 'x'": (json.dumps({"inputs": "x"}), "'inputs' must be a non-empty list"),
    "inputs ['x']": (json.dumps({"inputs": ["x"]}), "must be an object"),
    "parameters 5": (json.dumps({"inputs": [GOOD], "parameters": 5}), "must be an object"),
    "id 5": (json.dumps({"inputs": [GOOD], "id": 5}), "'id' must be a string"),
    "name 5": (_with(name=5), "'name' must be a string"),
    "name of 100k characters": (_with(name="n" * 100_000), "at most 256 characters"),
    "datatype list": (_with(datatype=["FP64"]), "unknown datatype"),
    "datatype object": (_with(datatype={"a": 1}), "unknown datatype"),
    "shape mismatch": (_with(shape=[2, 4]), "has 4 values, shape [2, 4] needs 8"),
    "huge shape": (_with(shape=[10**12, 4]), "needs 4000000000000"),
    "shape past int64": (_with(shape=[2**70, 4]), "'shape' must be a list"),
    "too many dims": (_with(shape=[1] * 40), "at most 32"),
    "negative dim": (_with(shape=[-1, 4]), "'shape' must be a list"),
    "data 'abc'": (_with(data="abc"), "'data' must be a list"),
    "data object": (_with(data={"a": 1}), "'data' must be a list"),
    "ragged data": (_with(data=[[1, 2], [3]]), "data is not FP64"),
    "strings as FP64": (_with(data=["a", "b", "c", "d"]), "data is not FP64"),
    "BYTES to FP64 model": (_with(datatype="BYTES", data=["a"] * 4), "model expects FP64"),
    "NaN token": (_with(data=[0, 1, 2, 3]).replace("[0,", "[NaN,"), "not valid JSON"),
    "not UTF-8": (b'{"inputs": "\xff\xfe"}', "not valid JSON"),
    "empty": (b"", "not valid JSON"),
    "a list": (b"[]", "must be a JSON object"),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_infer_bodies_are_400s_and_the_server_still_answers(
    client: AppClient, case: str
) -> None:
    body, match = HOSTILE[case]
    assert match in assert_error_shape(infer(client, body), 400)
    good_request_works(client)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
_json = st.recursive(
    _scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=16,
)
_tensor = st.fixed_dictionaries(
    {},
    optional={
        "name": st.just("input-0") | _json,
        "shape": st.lists(st.integers(min_value=-2, max_value=2**66), max_size=4) | _json,
        "datatype": st.sampled_from(sorted(DTYPES)) | _json,
        "data": st.lists(_scalars, max_size=12) | _json,
    },
)
_random_body = (
    st.fixed_dictionaries(
        {},
        optional={
            "inputs": st.lists(_tensor, max_size=3) | _json,
            "outputs": st.lists(st.fixed_dictionaries({"name": _json}), max_size=2) | _json,
            "id": _json,
            "parameters": _json,
        },
    )
    | _json
)
_FIELDS = ["inputs", "outputs", "id", "parameters", "name", "shape", "datatype", "data"]


def _mutate(changes: list[tuple[str, Any]]) -> dict[str, Any]:
    """A good request with some request or tensor fields replaced by arbitrary JSON."""
    tensor = dict(GOOD)
    body: dict[str, Any] = {"inputs": [tensor]}
    for field, value in changes:
        if field in GOOD:
            tensor[field] = value
        else:
            body[field] = value
    return body


_body = _random_body | st.builds(
    _mutate, st.lists(st.tuples(st.sampled_from(_FIELDS), _json), min_size=1, max_size=2)
)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(body=_body)
def test_fuzzed_infer_bodies_never_get_a_5xx(client: AppClient, body: Any) -> None:
    r = infer(client, json.dumps(body))
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert set(r.json()) == {"error"}


@settings(max_examples=100, deadline=None, database=None)
@given(raw=st.binary(max_size=200))
def test_fuzzed_raw_bytes_never_get_a_5xx(client: AppClient, raw: bytes) -> None:
    assert infer(client, raw).status_code < 500


def test_after_the_fuzzing_the_server_still_answers(client: AppClient) -> None:
    good_request_works(client)
    assert client.get("/v2/health/ready").status_code == 200


# -- webhook deliveries -----------------------------------------------------------------------


def _deliver(c: AppClient, body: bytes, delivery: str | None) -> Any:
    headers = {"X-Hub-Signature-256": sign(SECRET, body), "X-GitHub-Event": "push"}
    if delivery is not None:
        headers["X-GitHub-Delivery"] = delivery
    return c.post("/hooks/git", content=body, headers=headers)


def test_a_replayed_webhook_delivery_is_acknowledged_and_triggers_nothing(
    hooks: tuple[AppClient, Controller],
) -> None:
    c, ctl = hooks
    body = json.dumps({"ref": "refs/heads/main", "after": "a" * 40}).encode()
    first = _deliver(c, body, "72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert (first.status_code, first.json()) == (202, {"accepted": True, "event": "push"})
    assert ctl.wake.is_set()
    ctl.wake.clear()

    again = _deliver(c, body, "72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert again.status_code == 200
    assert again.json() == {"accepted": False, "event": "push", "replayed": True}
    renamed = _deliver(c, body, "a-fresh-id-on-the-same-signed-body")
    assert renamed.json()["replayed"] is True
    assert not ctl.wake.is_set()  # neither replay woke the controller

    other = json.dumps({"ref": "refs/heads/main", "after": "b" * 40}).encode()
    assert _deliver(c, other, "another-delivery").status_code == 202
    assert ctl.wake.is_set()
    metrics = c.get("/metrics").text
    assert 'mw_webhook_deliveries_total{result="replayed"} 2.0' in metrics
    assert 'mw_webhook_deliveries_total{result="accepted"} 2.0' in metrics


def test_refused_webhooks_are_counted_and_never_written_to_the_audit_log(
    hooks: tuple[AppClient, Controller],
) -> None:
    c, ctl = hooks
    for i in range(25):
        body = f'{{"n": {i}}}'.encode()
        headers = {"X-Hub-Signature-256": sign("a guess", body)} if i % 2 else {}
        assert c.post("/hooks/git", content=body, headers=headers).status_code in (401, 403)
    with ctl.store.session() as s:
        assert s.scalar(sql_select(func.count()).select_from(AuditEvent)) == 0
    assert 'mw_http_refused_requests_total{reason="signature"} 25.0' in c.get("/metrics").text
    assert not ctl.wake.is_set()


def test_remembered_deliveries_are_pruned_after_the_retention(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'registry.db'}")
    old = datetime.now(UTC) - timedelta(days=8)
    with store.session() as s:
        s.add(WebhookDelivery(key="id:ancient", event="push", received_at=old))
    assert remember(store, "fresh", b"{}", "push") is True
    with store.session() as s:
        keys = set(s.scalars(sql_select(WebhookDelivery.key)))
    assert "id:ancient" not in keys
    assert "id:fresh" in keys
    assert remember(store, "ancient", b'{"other": 1}', "push") is True  # forgotten, so new
    assert remember(store, "fresh", b'{"other": 2}', "push") is False
