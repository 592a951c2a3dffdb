"""`mw server` for real: a subprocess on loopback serving the API with real tokens, stopped
gracefully by SIGTERM; in local auth mode a non-loopback bind is refused."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from api_world import MODELS, Api

from modelworks.testing import spawn_mw


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, token: str | None) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait_up(base: str, proc: Any) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            urllib.request.urlopen(f"{base}/openapi.json", timeout=2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("mw server did not start")


def test_mw_server_serves_the_api_with_tokens_and_stops_on_sigterm(tmp_path: Path) -> None:
    api = Api(tmp_path / "ws", f"sqlite:///{tmp_path / 'registry.db'}")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    proc = spawn_mw(api.ws, "server", "--port", str(port), "-C", str(api.ws.root), env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_up(base, proc)
        code, body = _get(f"{base}/api/v1/models?limit=2", api.tokens["root"])
        assert code == 200
        assert [(r["tenant"], r["name"]) for r in body["items"]] == sorted(MODELS)[:2]
        assert body["next_cursor"]
        code, body = _get(f"{base}/api/v1/models", api.tokens["gus"])
        assert [r["tenant"] for r in body["items"]] == ["globex"]
        code, body = _get(f"{base}/api/v1/models", None)
        assert code == 401
        assert body["error"]["code"] == "unauthenticated"
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_mw_server_refuses_a_public_bind_in_local_mode(tmp_path: Path) -> None:
    from modelworks.testing import make_workspace

    ws = make_workspace(tmp_path / "ws")
    proc = spawn_mw(ws, "server", "--host", "0.0.0.0", "--port", str(_free_port()))
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "--host 0.0.0.0: auth.mode is local" in err
    assert "loopback only" in err
