"""`mw keys rotate` deletes the old private key; `mw keys revoke ID` stops its public key."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from test_supply_chain import trained

from modelworks import _git
from modelworks.serving import create_app
from modelworks.testing import AppClient, mw, mw_json
from modelworks.workspace import Workspace


@pytest.fixture
def ws(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return trained(tmp_path, tmp_path_factory)


def key_files(ws: Workspace) -> list[str]:
    return sorted(p.name for p in (ws.state_dir / "keys").iterdir())


def test_rotate_deletes_the_old_private_key_and_old_versions_still_verify(
    capsys: pytest.CaptureFixture[str], ws: Workspace
) -> None:
    old_private = (ws.state_dir / "keys" / "signing-key.pem").read_bytes()
    code, out, err = mw(capsys, ws, "keys", "rotate")
    assert code == 0, err
    assert "old private key deleted" in out
    remaining = [
        (ws.state_dir / "keys" / name).read_bytes()
        for name in key_files(ws)
        if name.startswith("signing-key")
    ]
    assert key_files(ws) == ["sealing-key.txt", "signing-key.pem"]
    assert old_private not in remaining
    assert not any(p.read_bytes() == old_private for p in ws.root.rglob("*.pem") if p.is_file())
    info = mw_json(capsys, ws, "verify", "model-0")
    assert info["checks"]["signature"]["retired"] is True


def test_rotate_removes_private_keys_archived_by_earlier_rotations(
    capsys: pytest.CaptureFixture[str], ws: Workspace
) -> None:
    keys = ws.state_dir / "keys"
    shutil.copy(keys / "signing-key.pem", keys / "signing-key.20250101T000000Z.pem")
    code, _, err = mw(capsys, ws, "keys", "rotate")
    assert code == 0, err
    assert key_files(ws) == ["sealing-key.txt", "signing-key.pem"]


def test_revoke_stops_verify_and_serving_and_survives_a_deleted_state_dir(
    capsys: pytest.CaptureFixture[str], ws: Workspace
) -> None:
    [old] = mw_json(capsys, ws, "keys", "list")["keys"]
    assert old["state"] == "current"
    code, _, err = mw(capsys, ws, "keys", "rotate")
    assert code == 0, err
    code, out, err = mw(capsys, ws, "keys", "revoke", old["id"], "--reason", "laptop lost")
    assert code == 0, err
    assert f"revoked signing key {old['id']}" in out
    assert _git.show(ws.root, "HEAD", "keys/revoked.json") is not None  # committed
    listed = mw_json(capsys, ws, "keys", "list")["keys"]
    assert [(k["id"], k["state"]) for k in listed][1] == (old["id"], "revoked")
    assert listed[1]["revoked"]["reason"] == "laptop lost"

    code, _, err = mw(capsys, ws, "verify", "model-0")
    assert code == 1
    assert f"signed by revoked key {old['id']}" in err
    assert "re-sign or retrain" in err
    assert "Traceback" not in err

    app = create_app(ws, "test", reconcile_in_background=False, sample_rate=0.0)
    with AppClient(app) as c:
        r = c.post("/v2/models/model-0/infer", json=_body())
        assert r.status_code >= 400
        assert f"revoked key {old['id']}" in r.text

    # Deleting the working-tree list does not un-revoke: every committed version counts.
    (ws.root / "keys" / "revoked.json").unlink()
    _git.commit(ws.root, ["keys/revoked.json"], "drop the revocation list")
    code, _, err = mw(capsys, ws, "verify", "model-0")
    assert code == 1
    assert f"signed by revoked key {old['id']}" in err
    [ev] = mw_json(capsys, ws, "audit", "--action", "key.revoked")["events"]
    assert ev["after"]["fingerprint"] == old["fingerprint"]


def test_revoking_the_current_key_needs_a_rotation_first(
    capsys: pytest.CaptureFixture[str], ws: Workspace
) -> None:
    [current] = mw_json(capsys, ws, "keys", "list")["keys"]
    code, _, err = mw(capsys, ws, "keys", "revoke", current["id"])
    assert code == 1
    assert "is the current signing key: rotate first" in err
    assert not (ws.root / "keys" / "revoked.json").exists()
    code, _, err = mw(capsys, ws, "keys", "revoke", "0123456789ab")
    assert code == 1
    assert "no signing key with ID '0123456789ab'" in err
    assert mw_json(capsys, ws, "verify", "model-0")["verified"] is True


def _body() -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [0.1, 0.2, 0.3, 0.4]}
        ]
    }


def test_a_broken_revocation_list_is_a_clear_error_and_cannot_unrevoke(
    capsys: pytest.CaptureFixture[str], ws: Workspace
) -> None:
    [old] = mw_json(capsys, ws, "keys", "list")["keys"]
    assert mw(capsys, ws, "keys", "rotate")[0] == 0
    assert mw(capsys, ws, "keys", "revoke", old["id"])[0] == 0
    revoked = ws.root / "keys" / "revoked.json"
    revoked.write_text("{not json")
    code, _, err = mw(capsys, ws, "verify", "model-0")
    assert code == 1
    assert "revoked.json: unreadable revocation list" in err
    assert "Traceback" not in err
    _git.commit(ws.root, ["keys/revoked.json"], "junk")
    revoked.write_text('{"revoked": []}\n')  # a valid but empty list on top
    _git.commit(ws.root, ["keys/revoked.json"], "empty the list")
    code, _, err = mw(capsys, ws, "verify", "model-0")
    assert code == 1
    assert f"signed by revoked key {old['id']}" in err
