"""The audit log's signed head: cutting the tail or touching the anchor fails `mw audit verify`."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from test_supply_chain import trained

from modelworks import _git
from modelworks.testing import mw
from modelworks.workspace import Workspace

ANCHOR = "audit/anchor.json"


@pytest.fixture
def ws(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return trained(tmp_path, tmp_path_factory)


def verify(capsys: pytest.CaptureFixture[str], ws: Workspace) -> tuple[int, dict[str, Any]]:
    code, out, _ = mw(capsys, ws, "audit", "verify", "--json")
    return code, json.loads(out)


def local(ws: Workspace) -> Path:
    return ws.state_dir / "audit-anchor.json"


def sql(ws: Workspace, statement: str) -> None:
    conn = sqlite3.connect(ws.state_dir / "registry.db", isolation_level=None)
    conn.execute(statement)
    conn.close()


def kinds(report: dict[str, Any]) -> list[tuple[int, str]]:
    return [(p["seq"], p["kind"]) for p in report["problems"]]


def details(report: dict[str, Any]) -> str:
    return " | ".join(p["detail"] for p in report["problems"])


def seal(capsys: pytest.CaptureFixture[str], ws: Workspace, mp: pytest.MonkeyPatch) -> None:
    """One more audit event, written through the CLI (which advances the signed head)."""
    mp.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"hunter2\n")))
    code, _, err = mw(capsys, ws, "secret", "seal", "TOKEN")
    assert code == 0, err


@pytest.fixture
def anchored(capsys: pytest.CaptureFixture[str], ws: Workspace) -> Workspace:
    """The trained workspace after its first intact verify: both anchors at seq 4."""
    code, out, err = mw(capsys, ws, "audit", "verify")
    assert code == 0, err
    assert "audit log intact (4 events)" in out
    assert "signed head at seq 4, committed" in out
    assert json.loads(local(ws).read_text())["seq"] == 4
    committed = json.loads(_git.show(ws.root, "HEAD", ANCHOR) or "{}")
    assert (committed["seq"], committed["kind"]) == (4, "git")
    assert committed["signature"]
    return ws


def test_intact_log_verifies_again_without_a_new_commit(
    capsys: pytest.CaptureFixture[str], anchored: Workspace
) -> None:
    head = _git.head(anchored.root)
    code, report = verify(capsys, anchored)
    assert code == 0
    assert report["intact"] is True
    assert report["anchors"]["local"]["seq"] == report["anchors"]["committed"]["seq"] == 4
    assert _git.head(anchored.root) == head  # the head did not move: nothing to commit


def test_deleted_local_anchor_fails(
    capsys: pytest.CaptureFixture[str], anchored: Workspace
) -> None:
    local(anchored).unlink()
    code, _, err = mw(capsys, anchored, "audit", "verify")
    assert code == 1
    assert "audit-anchor.json is missing, but an audit anchor was committed" in err
    assert "NOT intact" in err
    assert not local(anchored).exists()  # a failed verify writes no new anchor


def test_deleted_local_and_committed_anchor_fails(
    capsys: pytest.CaptureFixture[str], anchored: Workspace
) -> None:
    local(anchored).unlink()
    (anchored.root / ANCHOR).unlink()
    _git.commit(anchored.root, [ANCHOR], "remove the anchor")
    code, report = verify(capsys, anchored)
    assert code == 1
    assert "was committed before but is gone from HEAD" in details(report)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: {**d, "seq": 2}, "bad signature"),
        (lambda d: {k: v for k, v in d.items() if k != "signature"}, "is not signed"),
        (lambda d: {**d, "key": "sha256:" + "ab" * 32}, "not a workspace signing key"),
    ],
)
def test_rewritten_local_anchor_fails(
    capsys: pytest.CaptureFixture[str], anchored: Workspace, edit: Any, message: str
) -> None:
    doc = json.loads(local(anchored).read_text())
    local(anchored).write_text(json.dumps(edit(doc)))
    code, report = verify(capsys, anchored)
    assert code == 1
    assert message in details(report)
    assert "audit-anchor.json" in details(report)


def test_rewritten_committed_anchor_fails(
    capsys: pytest.CaptureFixture[str], anchored: Workspace
) -> None:
    path = anchored.root / ANCHOR
    path.write_text(json.dumps({**json.loads(path.read_text()), "seq": 3}))
    _git.commit(anchored.root, [ANCHOR], "move the anchor back")
    code, report = verify(capsys, anchored)
    assert code == 1
    assert f"{ANCHOR} (committed) has a bad signature" in details(report)


def test_truncated_tail_fails(capsys: pytest.CaptureFixture[str], anchored: Workspace) -> None:
    sql(anchored, "DELETE FROM audit_events WHERE seq > 2")
    code, _, err = mw(capsys, anchored, "audit", "verify")
    assert code == 1
    assert "seq 3: deleted" in err
    assert "the log ends at seq 2" in err
    assert "truncated (rows 3..4 are gone)" in err


@pytest.mark.parametrize("anchor", ["deleted", "rewritten", "replaced by the committed one"])
def test_truncated_tail_with_the_anchor_tampered_fails(
    capsys: pytest.CaptureFixture[str], anchored: Workspace, anchor: str
) -> None:
    sql(anchored, "DELETE FROM audit_events WHERE seq > 2")
    if anchor == "deleted":
        local(anchored).unlink()
    elif anchor == "rewritten":
        conn = sqlite3.connect(anchored.state_dir / "registry.db")
        [hash2] = conn.execute("SELECT hash FROM audit_events WHERE seq = 2").fetchone()
        conn.close()
        doc = json.loads(local(anchored).read_text())
        local(anchored).write_text(json.dumps({**doc, "seq": 2, "hash": hash2}))
    else:
        shutil.copy(anchored.root / ANCHOR, local(anchored))
    code, report = verify(capsys, anchored)
    assert code == 1
    assert (3, "deleted") in kinds(report)  # the committed anchor still names seq 4
    assert "truncated" in details(report)


def test_every_cli_audit_write_advances_the_signed_head(
    capsys: pytest.CaptureFixture[str], anchored: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    seal(capsys, anchored, monkeypatch)  # seq 5, after the committed anchor (seq 4)
    assert json.loads(local(anchored).read_text())["seq"] == 5
    sql(anchored, "DELETE FROM audit_events WHERE seq = 5")
    code, report = verify(capsys, anchored)
    assert code == 1
    assert kinds(report) == [(5, "deleted")]
    assert "audit-anchor.json" in details(report)


def test_accept_head_reanchors_after_a_deleted_anchor_and_is_audited(
    capsys: pytest.CaptureFixture[str], anchored: Workspace
) -> None:
    local(anchored).unlink()
    code, out, err = mw(capsys, anchored, "audit", "verify", "--accept-head", "--as", "alice")
    assert code == 0, err
    assert "accepted" in out
    [ev] = json.loads(mw(capsys, anchored, "audit", "--action", "audit.*", "--json")[1])["events"]
    assert ev["actor"] == "alice (unauthenticated)"
    assert "is missing" in ev["before"]["problems"][0]
    code, report = verify(capsys, anchored)
    assert code == 0, report
    assert report["anchors"]["local"]["seq"] == 5  # the acceptance event itself


def test_accept_head_never_accepts_a_broken_chain(
    capsys: pytest.CaptureFixture[str], anchored: Workspace
) -> None:
    sql(anchored, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 2")
    code, _, err = mw(capsys, anchored, "audit", "verify", "--accept-head")
    assert code == 1
    assert "seq 2: edited" in err


def test_rotate_then_revoke_keeps_the_anchors_valid(
    capsys: pytest.CaptureFixture[str], anchored: Workspace
) -> None:
    [old] = json.loads(mw(capsys, anchored, "keys", "list", "--json")[1])["keys"]
    assert mw(capsys, anchored, "keys", "rotate")[0] == 0
    assert mw(capsys, anchored, "keys", "revoke", old["id"])[0] == 0
    code, report = verify(capsys, anchored)
    assert code == 0, report
    assert report["anchors"]["committed"]["key"] != old["fingerprint"]


def test_anchor_signed_by_a_revoked_key_fails(
    capsys: pytest.CaptureFixture[str], anchored: Workspace
) -> None:
    saved = local(anchored).read_text()
    [old] = json.loads(mw(capsys, anchored, "keys", "list", "--json")[1])["keys"]
    assert mw(capsys, anchored, "keys", "rotate")[0] == 0
    assert mw(capsys, anchored, "keys", "revoke", old["id"])[0] == 0
    local(anchored).write_text(saved)  # an anchor only the old key signed
    code, report = verify(capsys, anchored)
    assert code == 1
    assert f"signed by revoked key {old['id']}" in details(report)


def test_a_workspace_with_only_the_old_unsigned_checkpoint_is_migrated(
    capsys: pytest.CaptureFixture[str], ws: Workspace
) -> None:
    legacy = ws.state_dir / "audit-checkpoint.json"
    conn = sqlite3.connect(ws.state_dir / "registry.db")
    [hash3] = conn.execute("SELECT hash FROM audit_events WHERE seq = 3").fetchone()
    conn.close()
    legacy.write_text(json.dumps({"seq": 3, "hash": hash3, "at": "2026-01-01T00:00:00+00:00"}))
    code, report = verify(capsys, ws)
    assert code == 0, report
    assert not legacy.exists()
    assert report["anchored"]["seq"] == 4
    legacy.write_text(json.dumps({"seq": 3, "hash": "0" * 64}))  # ignored once signed
    assert verify(capsys, ws)[0] == 0


def test_legacy_checkpoint_still_catches_a_cut_tail_before_migration(
    capsys: pytest.CaptureFixture[str], ws: Workspace
) -> None:
    conn = sqlite3.connect(ws.state_dir / "registry.db")
    [hash4] = conn.execute("SELECT hash FROM audit_events WHERE seq = 4").fetchone()
    conn.close()
    (ws.state_dir / "audit-checkpoint.json").write_text(json.dumps({"seq": 4, "hash": hash4}))
    sql(ws, "DELETE FROM audit_events WHERE seq = 4")
    code, report = verify(capsys, ws)
    assert code == 1
    assert kinds(report) == [(4, "deleted")]
    assert not local(ws).exists()


@pytest.mark.parametrize("tamper", ["delete", "rewrite"])
def test_cutting_the_tail_and_the_files_beside_the_database_fails(
    capsys: pytest.CaptureFixture[str], ws: Workspace, tamper: str
) -> None:
    """What the DB writer can do: cut the log, then delete or rewrite every file in .mw/."""
    code, _, err = mw(capsys, ws, "audit", "verify")
    assert code == 0, err
    conn = sqlite3.connect(ws.state_dir / "registry.db")
    [hash2] = conn.execute("SELECT hash FROM audit_events WHERE seq = 2").fetchone()
    conn.close()
    sql(ws, "DELETE FROM audit_events WHERE seq > 2")
    for path in ws.state_dir.glob("audit-*.json"):
        if tamper == "delete":
            path.unlink()
        else:
            path.write_text(json.dumps({**json.loads(path.read_text()), "seq": 2, "hash": hash2}))
    code, _, err = mw(capsys, ws, "audit", "verify")
    assert code == 1
    assert "NOT intact" in err
    assert "truncated" in err or "is missing" in err
