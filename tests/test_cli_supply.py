"""verify, audit, keys and secret through `mw`'s entry point: exit codes, messages, --json."""

from __future__ import annotations

import io
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_supply_chain import trained

from modelworks import _git
from modelworks.artifacts.oci import OCIStore
from modelworks.cli import main
from modelworks.security.keys import sealing_keys, secrets_dir
from modelworks.security.secrets import unseal
from modelworks.testing import mw, mw_json
from modelworks.workspace import Workspace


def one_error(err: str) -> str:
    """The single red line a failing command prints (no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines[0].startswith("error: ")
    return " ".join(lines)


@pytest.fixture
def ws(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return trained(tmp_path, tmp_path_factory)


def served(ws: Workspace, name: str = "model-0") -> dict[str, Any]:
    return dict(yaml.safe_load((ws.root / f"deploy/test/{name}/config.yaml").read_text()))


def test_verify_served_version(capsys: pytest.CaptureFixture[str], ws: Workspace) -> None:
    cfg = served(ws)
    code, out, _ = mw(capsys, ws, "verify", "model-0")
    assert code == 0
    assert f"verified model-0@{cfg['version']}" in out
    assert "signature" in out
    assert "CycloneDX 1.5" in out
    info = mw_json(capsys, ws, "verify", f"model-1@{served(ws, 'model-1')['version']}")
    assert info["verified"] is True
    assert info["digest"] == served(ws, "model-1")["artifact_digest"]
    assert info["checks"]["signature"]["key"] == "keys/signing-key.pub.pem"


def test_verify_failures_are_one_red_line(
    capsys: pytest.CaptureFixture[str], ws: Workspace
) -> None:
    code, _, err = mw(capsys, ws, "verify", "model-0@nope")
    assert code == 1
    assert "model 'model-0' has no version 'nope'" in one_error(err)
    code, _, err = mw(capsys, ws, "verify", "modle-0")
    assert code == 1
    assert "Did you mean 'model-0'?" in one_error(err)

    digest = served(ws)["artifact_digest"]
    oci = OCIStore(ws.oci_dir)
    blob = oci.blob_path(oci.manifest(digest)["layers"][-1]["digest"])
    blob.write_bytes(blob.read_bytes()[:-512])
    code, out, err = mw(capsys, ws, "verify", "model-0")
    assert code == 1
    assert out == ""
    assert "is corrupt" in one_error(err)


def test_show_json_has_the_sbom(capsys: pytest.CaptureFixture[str], ws: Workspace) -> None:
    info = mw_json(capsys, ws, "show", "model-0")
    assert info["sbom"]["format"] == "CycloneDX"
    assert info["sbom"]["components"] > 10
    assert info["artifact"]["digest"] == served(ws)["artifact_digest"]


def test_audit_lists_and_filters(capsys: pytest.CaptureFixture[str], ws: Workspace) -> None:
    events = mw_json(capsys, ws, "audit")["events"]
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert {e["action"] for e in events} == {"version.registered", "deployment"}
    registered = mw_json(capsys, ws, "audit", "--action", "version.*")["events"]
    assert [e["action"] for e in registered] == ["version.registered"] * 2
    mine = mw_json(capsys, ws, "audit", "--model", "model-1")["events"]
    assert {e["target"] for e in mine} == {"model-1"}
    assert len(mine) == 2
    assert mw_json(capsys, ws, "audit", "--actor", "nobody")["events"] == []
    assert mw_json(capsys, ws, "audit", "--tenant", "default", "--limit", "1")["events"] == [
        events[-1]
    ]
    code, out, _ = mw(capsys, ws, "audit", "--model", "model-0")
    assert code == 0
    assert "deployment" in out
    assert "version.registered" in out


def test_audit_verify_intact_then_edited(capsys: pytest.CaptureFixture[str], ws: Workspace) -> None:
    code, out, _ = mw(capsys, ws, "audit", "verify")
    assert code == 0
    assert "audit log intact (4 events)" in out
    conn = sqlite3.connect(ws.state_dir / "registry.db")
    with conn:
        conn.execute("UPDATE audit_events SET target = 'model-9' WHERE seq = 3")
        conn.execute("DELETE FROM audit_events WHERE seq = 1")
    conn.close()
    code, out, err = mw(capsys, ws, "audit", "verify")
    assert code == 1
    assert "seq 1: deleted" in err
    assert "seq 3: edited" in err
    assert "audit log is NOT intact: 2 problem(s) in 3 events" in err
    code, out, _ = mw(capsys, ws, "audit", "verify", "--json")
    report = json.loads(out)
    assert code == 1
    assert report["intact"] is False
    assert [(p["seq"], p["kind"]) for p in report["problems"]] == [(1, "deleted"), (3, "edited")]


def test_keys_rotate_and_list(capsys: pytest.CaptureFixture[str], ws: Workspace) -> None:
    before = mw_json(capsys, ws, "keys", "list")["keys"]
    assert [k["current"] for k in before] == [True]
    code, out, _ = mw(capsys, ws, "keys", "rotate", "--as", "alice")
    assert code == 0
    assert "rotated signing key" in out
    assert "kept as keys/signing-key." in out
    after = mw_json(capsys, ws, "keys", "list")["keys"]
    assert [k["current"] for k in after] == [True, False]
    assert after[1]["fingerprint"] == before[0]["fingerprint"] != after[0]["fingerprint"]
    [ev] = mw_json(capsys, ws, "audit", "--action", "key.rotated")["events"]
    assert ev["actor"] == "alice (unauthenticated)"  # local mode: --as is not proof
    assert ev["after"]["fingerprint"] == after[0]["fingerprint"]
    info = mw_json(capsys, ws, "verify", "model-0")
    assert info["checks"]["signature"]["retired"] is True
    code, out, _ = mw(capsys, ws, "audit", "verify")
    assert "audit log intact (5 events)" in out


def test_keys_rotate_without_keys_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], ws: Workspace
) -> None:
    (ws.root / "keys/signing-key.pub.pem").unlink()
    code, _, err = mw(capsys, ws, "keys", "rotate")
    assert code == 1
    assert "signing-key.pub.pem: cannot read the public key" in one_error(err)
    code, _, err = mw(capsys, ws, "verify", "model-0")
    assert code == 1
    assert "signing public key" in one_error(err)


def test_secret_seal_from_stdin_and_list(
    capsys: pytest.CaptureFixture[str], ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = "correct horse battery staple"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(f"{value}\n".encode())))
    code, out, _ = mw(capsys, ws, "secret", "seal", "DB_PASSWORD", "--as", "alice")
    assert code == 0
    assert "sealed DB_PASSWORD -> secrets/DB_PASSWORD.sealed" in out
    sealed = secrets_dir(ws) / "DB_PASSWORD.sealed"
    assert value.encode() not in sealed.read_bytes()
    assert b"BEGIN AGE ENCRYPTED FILE" in sealed.read_bytes()
    assert unseal("DB_PASSWORD", sealing_keys(ws)[0], secrets_dir(ws)) == value.encode()
    assert _git.git(ws.root, "status", "--porcelain", "secrets").strip() == ""
    assert mw_json(capsys, ws, "secret", "list") == {"secrets": ["DB_PASSWORD"]}
    code, out, _ = mw(capsys, ws, "secret", "list")
    assert out.strip() == "DB_PASSWORD"
    [ev] = mw_json(capsys, ws, "audit", "--action", "secret.*")["events"]
    assert (ev["actor"], ev["target"]) == ("alice (unauthenticated)", "DB_PASSWORD")
    assert value not in json.dumps(ev)


def test_secret_bad_name_and_empty_value(
    capsys: pytest.CaptureFixture[str], ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    code, _, err = mw(capsys, ws, "secret", "seal", "bad/name")
    assert code == 1
    assert "secret name 'bad/name' is invalid" in one_error(err)
    code, _, err = mw(capsys, ws, "secret", "seal", "EMPTY")
    assert code == 1
    assert "the value is empty" in one_error(err)
    assert mw_json(capsys, ws, "secret", "list") == {"secrets": []}


def _read_until(fd: int, token: bytes, seen: bytearray, timeout: float = 30.0) -> None:
    import os
    import select
    import time

    deadline = time.monotonic() + timeout
    while token not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no {token!r} within {timeout}s; got {bytes(seen)!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            raise AssertionError(f"terminal closed before {token!r}; got {bytes(seen)!r}")
        seen += chunk


def _type_hidden(master: int, slave: int, text: bytes, timeout: float = 30.0) -> None:
    """Type `text` once the program has turned echo off (getpass flushes earlier input)."""
    import os
    import termios
    import time

    deadline = time.monotonic() + timeout
    while termios.tcgetattr(slave)[3] & termios.ECHO:
        if time.monotonic() > deadline:
            raise AssertionError("the program never turned terminal echo off")
        time.sleep(0.01)
    os.write(master, text)


def test_secret_seal_prompts_without_echo_on_a_terminal(ws: Workspace) -> None:
    import os
    import pty
    import subprocess

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelworks", "secret", "seal", "TTY_SECRET", "-C", str(ws.root)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    seen = bytearray()
    try:
        _read_until(master, b"value of TTY_SECRET", seen)
        _type_hidden(master, slave, b"hunter2\n")
        _read_until(master, b"confirmation", seen)
        _type_hidden(master, slave, b"hunter2\n")
        _read_until(master, b"secrets/TTY_SECRET.sealed", seen)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
        os.close(slave)
    assert b"hunter2" not in seen
    assert unseal("TTY_SECRET", sealing_keys(ws)[0], secrets_dir(ws)) == b"hunter2"


def test_audit_group_options_reach_verify(
    capsys: pytest.CaptureFixture[str],
    ws: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # not a workspace: -C before `verify` must be honoured
    capsys.readouterr()
    main(["audit", "-C", str(ws.root), "--json", "verify"])
    report = json.loads(capsys.readouterr().out)
    assert report["intact"] is True
    assert report["events"] == 4


def _set_metrics(ws: Workspace, name: str, version: str, metrics: dict[str, Any]) -> None:
    db = sqlite3.connect(ws.registry_url.split("///", 1)[1])
    with db:
        db.execute(
            "UPDATE model_versions SET metrics = ? WHERE version = ? AND model_id = "
            "(SELECT id FROM models WHERE name = ?)",
            (json.dumps(metrics), version, name),
        )
    db.close()


def test_verify_refuses_registry_metrics_that_differ_from_the_signed_ones(
    capsys: pytest.CaptureFixture[str], ws: Workspace
) -> None:
    cfg = served(ws)
    info = mw_json(capsys, ws, "verify", "model-0")
    assert info["checks"]["metrics"] == {
        "signed": info["checks"]["metrics"]["signed"],
        "registry_matches": True,
    }
    signed = json.loads(OCIStore(ws.oci_dir).read_file(cfg["artifact_digest"], "metrics.json"))
    assert "accuracy" in signed
    edited = dict(signed, accuracy=0.1)
    _set_metrics(ws, "model-0", cfg["version"], edited)
    code, out, err = mw(capsys, ws, "verify", "model-0")
    assert code == 1
    assert out == ""
    line = one_error(err)
    assert f"model-0@{cfg['version']}" in line
    assert "accuracy: the registry says 0.1" in line
    assert f"the signed artifact {signed['accuracy']!r}" in line
    _set_metrics(ws, "model-0", cfg["version"], signed)  # restored: verifies again
    assert mw(capsys, ws, "verify", "model-0")[0] == 0
