"""The CLI's remote mode: with MW_SERVER set, `mw` talks to a real control plane on loopback.

The server is the real app under uvicorn on 127.0.0.1 (modelworks.testing.serve_on_loopback),
serving a copy of test_promote's trained workspace in `auth.mode: token`; each command's
`--json` output through the server is compared with the same command run locally.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from test_api_write import change, state, token_workspace
from test_promote import served, trained_copy

from modelworks.api import create_app
from modelworks.errors import NotFoundError
from modelworks.testing import mw, run_cli, serve_on_loopback, spawn_mw
from modelworks.workspace import Workspace

Capsys = pytest.CaptureFixture[str]
READS = find_spec("modelworks.api.routers.models") is not None


@pytest.fixture
def ws(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return trained_copy(tmp_path, tmp_path_factory)


@pytest.fixture
def tokens(ws: Workspace) -> dict[str, str]:
    return token_workspace(ws)


@pytest.fixture
def server(ws: Workspace, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.delenv("MW_TOKEN", raising=False)
    with serve_on_loopback(create_app(Workspace.load(ws.root))) as url:
        yield url


def remote(
    capsys: Capsys, monkeypatch: pytest.MonkeyPatch, url: str, token: str | None, *args: str
) -> tuple[int, str, str]:
    """`mw ARGS` with MW_SERVER=url (and the token); (exit code, stdout, stderr)."""
    with monkeypatch.context() as m:
        m.setenv("MW_SERVER", url)
        extra = ("--token", token) if token else ()
        return run_cli(capsys, *args, *extra)


def remote_json(capsys: Capsys, mp: pytest.MonkeyPatch, url: str, token: str, *args: str) -> Any:
    code, out, err = remote(capsys, mp, url, token, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def local_json(capsys: Capsys, ws: Workspace, token: str, *args: str) -> Any:
    code, out, err = mw(capsys, ws, *args, "--json", "--token", token)
    assert code == 0, err
    return json.loads(out)


def test_plan_promote_approve_reject_remote_equal_local(
    ws: Workspace,
    tokens: dict[str, str],
    server: str,
    capsys: Capsys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tokens["root"]
    change(ws, "model-0", 4.0)
    code, _, _ = remote(capsys, monkeypatch, server, root, "plan", "--detailed-exitcode")
    assert code == 2  # changes found, as locally
    assert remote_json(capsys, monkeypatch, server, root, "plan") == local_json(
        capsys, ws, root, "plan"
    )
    opened = remote_json(capsys, monkeypatch, server, tokens["dev"], "promote", "model-2")
    assert (opened["state"], opened["author"], opened["tenant"]) == ("open", "dev", "default")
    rid = str(opened["id"])
    for args in (["promotions"], ["promotions", "--state", "open"], ["promotion", rid]):
        assert remote_json(capsys, monkeypatch, server, root, *args) == local_json(
            capsys, ws, root, *args
        )
    code, _, err = remote(capsys, monkeypatch, server, tokens["dev"], "approve", rid)
    assert code == 77, err
    assert "needs approver or higher" in err
    code, _, err = remote(capsys, monkeypatch, server, tokens["ann"], "approve", rid)
    assert code == NotFoundError.exit_code, err  # acme's approver: not found, not forbidden
    merged = remote_json(capsys, monkeypatch, server, tokens["bob"], "approve", rid, "-m", "ok")
    assert merged["state"] == "merged"
    assert merged == local_json(capsys, ws, root, "promotion", rid)
    assert served(ws, "prod", "model-2") == served(ws, "test", "model-2")
    again = remote_json(capsys, monkeypatch, server, tokens["bob"], "promote", "model-0")
    code, _, err = remote(capsys, monkeypatch, server, tokens["bob"], "approve", str(again["id"]))
    assert code == 77, err
    assert "opened promotion request" in err  # the author cannot approve their own
    code, out, err = remote(
        capsys, monkeypatch, server, root, "reject", str(again["id"]), "--reason", "no"
    )
    assert code == 0, err
    assert f"Rejected promotion request #{again['id']}: no" in out
    code, out, _ = remote(capsys, monkeypatch, server, root, "promotions")
    assert code == 0
    assert "2 promotion request(s)" in out


def test_apply_queues_and_rollback_reverts_through_the_server(
    ws: Workspace,
    tokens: dict[str, str],
    server: str,
    capsys: Capsys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    change(ws, "model-0", 6.0)
    queued = remote_json(capsys, monkeypatch, server, tokens["dev"], "apply")
    assert queued["queued"] == 1
    assert [r["model"] for r in queued["runs"]] == ["model-0"]
    code, out, _ = remote(capsys, monkeypatch, server, tokens["dev"], "apply")
    assert code == 0
    assert "0 run(s) queued, 1 waiting or running" in out
    first = served(ws, "test", "model-0")
    code, _, err = mw(capsys, ws, "apply", "model-0", "--token", tokens["dev"])  # runs the queue
    assert code == 0, err
    second = served(ws, "test", "model-0")
    assert second != first
    back = remote_json(
        capsys, monkeypatch, server, tokens["dev"], "rollback", "model-0", "--env", "test"
    )
    assert (back["from"], back["to"]) == (second, first)
    assert served(ws, "test", "model-0") == first
    code, _, err = remote(capsys, monkeypatch, server, tokens["dev"], "rollback", "model-0")
    assert code == 77, err  # prod is gated: an approver's job, as locally


def test_wrong_token_is_77_and_nothing_changes(
    ws: Workspace,
    tokens: dict[str, str],
    server: str,
    capsys: Capsys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = state(ws)
    for args in (["plan"], ["promote", "model-0"], ["approve", "1"], ["promotions"]):
        code, _, err = remote(capsys, monkeypatch, server, "mw_not-a-real-token", *args)
        assert code == 77, (args, err)
        assert "Traceback" not in err
    code, _, err = remote(capsys, monkeypatch, server, None, "promotions")
    assert code == 77
    assert "Authorization" in err
    code, _, err = remote(capsys, monkeypatch, server, tokens["vic"], "promote", "model-0")
    assert code == 77
    assert "developer" in err
    code, _, err = remote(
        capsys, monkeypatch, server, tokens["dev"], "promote", "model-0", "--as", "bob"
    )
    assert code != 0
    assert "--as cannot be used with MW_SERVER" in err
    assert state(ws) == before


def test_a_server_that_is_down_is_69_naming_mw_server(
    capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}"
    for args in (["plan"], ["promotions"], ["approve", "1"]):
        code, _, err = remote(capsys, monkeypatch, url, "mw_x", *args)
        assert code == 69, err
        assert f"MW_SERVER={url}" in " ".join(err.split())
    code, _, err = remote(capsys, monkeypatch, "not a url", "mw_x", "plan")
    assert code != 0
    assert "MW_SERVER='not a url' is not a URL" in err


def test_the_real_mw_in_a_subprocess_talks_to_the_server(
    ws: Workspace, tokens: dict[str, str], server: str
) -> None:
    env = {**os.environ, "MW_SERVER": server, "MW_TOKEN": tokens["root"]}
    proc = spawn_mw(ws, "promotions", "--json", env=env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out) == {"promotions": []}


@pytest.mark.skipif(not READS, reason="the read routers (models, runs, audit) are not here yet")
def test_read_commands_remote_equal_local(
    ws: Workspace,
    tokens: dict[str, str],
    server: str,
    capsys: Capsys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tokens["root"]
    for args in (
        ["status"],
        ["show", "model-0"],
        ["runs"],
        ["runs", "--model", "model-2", "--limit", "1"],
        ["logs", "model-0"],
        ["audit", "--limit", "5"],
        ["audit", "--action", "promotion.*"],
        ["audit"],
    ):
        assert remote_json(capsys, monkeypatch, server, root, *args) == local_json(
            capsys, ws, root, *args
        ), args


@pytest.mark.skipif(not READS, reason="`mw server` is not here yet")
def test_against_a_real_mw_server_subprocess(
    ws: Workspace, tokens: dict[str, str], capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = spawn_mw(ws, "server", "--port", str(port), "-C", str(ws.root))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                httpx.get(f"{url}/openapi.json", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "mw server did not start"
                time.sleep(0.2)
        opened = remote_json(capsys, monkeypatch, url, tokens["dev"], "promote", "model-0")
        assert opened["state"] == "open"
        assert remote_json(capsys, monkeypatch, url, tokens["root"], "status") == local_json(
            capsys, ws, tokens["root"], "status"
        )
        code, _, _ = remote(capsys, monkeypatch, url, "mw_wrong", "promotions")
        assert code == 77
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
