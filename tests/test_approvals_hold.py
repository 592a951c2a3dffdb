"""Approvals that hold: a gated environment serves only what an approval put there.

Real git, real SQLite, the real `mw` CLI in subprocesses, the real `mw serve` on loopback,
and a real SIGKILL of a real `mw approve` at each step of its merge.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from test_promote import git, retrain, served, trained_copy
from test_rollback import ship

from modelworks import _git
from modelworks.errors import DeployError
from modelworks.gitops.attest import Verifier, approved_env, attestation_path
from modelworks.gitops.deploy import config_path
from modelworks.gitops.promote import promote
from modelworks.gitops.rollback import rollback
from modelworks.registry import audit
from modelworks.registry.models import Deployment
from modelworks.registry.store import Store
from modelworks.testing import spawn_mw
from modelworks.workspace import Workspace

PROD = config_path("prod", "model-0")
INFER = {
    "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": [0.5, 1, 0, 0]}]
}


@pytest.fixture
def ws(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return trained_copy(tmp_path, tmp_path_factory)


@pytest.fixture
def store(ws: Workspace) -> Store:
    return Store(ws.registry_url)


def _mw(ws: Workspace, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return spawn_mw(ws, *args, env={**os.environ, **(env or {})})


def _run(ws: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    proc = _mw(ws, *args)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _hand_commit(ws: Workspace) -> tuple[str, str]:
    """Copy what test serves for model-0 into prod with a plain `git commit`; (commit, version)."""
    text = (ws.root / config_path("test", "model-0")).read_text()
    (ws.root / PROD).write_text(text)
    _git.commit(ws.root, ["deploy/prod"], "hotfix: bump model-0 in prod")
    return str(_git.head(ws.root)), str(served(ws, "prod", "model-0"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """`mw serve --env prod` on a loopback port, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, ws: Workspace, tmp: Path) -> None:
        self.port = _free_port()
        self.log = tmp / "serve.log"
        self._out = self.log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelworks", "serve", "--env", "prod", "-p", str(self.port)],
            cwd=ws.root,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.base}/v2/health/live", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError(f"mw serve did not start: {self.log.read_text()}")

    def infer(self, model: str) -> dict[str, Any]:
        r = httpx.post(f"{self.base}/v2/models/{model}/infer", json=INFER, timeout=30)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def metrics(self) -> str:
        return httpx.get(f"{self.base}/metrics", timeout=10).text

    def stop(self) -> str:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        self._out.close()
        return self.log.read_text()


def test_rollback_to_a_version_prod_never_served_is_refused(ws: Workspace, store: Store) -> None:
    v1 = ship(ws, store)
    v2 = retrain(ws, "model-0", 0.05)  # registered and served in test, never in prod
    head = _git.head(ws.root)
    proc = _run(ws, "rollback", "model-0", "--env", "prod", "--to", v2, "--as", "carol")
    assert proc.returncode == 1
    assert f"prod never served model-0 version {v2} through an approved promotion" in proc.stderr
    assert "promote it instead (`mw promote model-0 --to prod`)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _git.head(ws.root) == head
    assert served(ws, "prod", "model-0") == v1
    # A version prod served only through a hand commit is not a rollback target either.
    _hand_commit(ws)
    assert rollback(ws, store, "model-0", to=v1, actor="carol")["to"] == v1
    with pytest.raises(DeployError, match=rf"prod never served model-0 version {v2}"):
        rollback(ws, store, "model-0", to=v2, actor="carol")


def test_rollback_to_the_previous_approved_version_is_attested(ws: Workspace, store: Store) -> None:
    v1 = ship(ws, store)
    retrain(ws, "model-0", 0.05)
    v2 = ship(ws, store)
    result = rollback(ws, store, "model-0", actor="carol")
    assert (result["from"], result["to"]) == (v2, v1)
    attestation = json.loads((ws.root / attestation_path("prod", "model-0")).read_text())
    assert (attestation["kind"], attestation["version"], attestation["actor"]) == (
        "rollback",
        v1,
        "carol",
    )
    assert (attestation["promotion"], attestation["approvers"]) == (1, ["bob"])
    check = approved_env(ws, "prod", str(_git.head(ws.root)))
    assert check.refused == []
    assert check.configs["model-0"].version == v1
    (event,) = audit.rows(store, action="rollback")
    assert event["after"]["version"] == v1


def test_a_hand_commit_to_prod_is_not_served(ws: Workspace, store: Store, tmp_path: Path) -> None:
    v1 = ship(ws, store)
    retrain(ws, "model-0", 0.05)
    evil = ws.root / config_path("prod", "evil")
    evil.parent.mkdir(parents=True)
    evil.write_bytes(b"\xff\xfe not yaml \x00")
    commit, v2 = _hand_commit(ws)
    assert v2 != v1
    server = Served(ws, tmp_path)
    try:
        assert server.infer("model-0")["model_version"] == v1
        meta = httpx.get(f"{server.base}/v2/models/model-0", timeout=10).json()
        assert meta["versions"] == [v1]
        metrics = server.metrics()
        assert (
            'mw_serving_unapproved_configs{env="prod",model="model-0",tenant="default"} 1.0'
            in metrics
        )
        assert (
            'mw_serving_unapproved_configs{env="prod",model="evil",tenant="default"} 1.0' in metrics
        )
        assert httpx.get(f"{server.base}/v2/models/evil", timeout=10).status_code == 404
    finally:
        log = server.stop()
    assert f"{PROD} at commit {commit[:12]} is not approved" in log
    assert f"keeping the last approved version {v1}" in log
    assert "deploy/prod/evil/config.yaml" in log
    assert "no approved version to keep, so it is not served" in log

    proc = _run(ws, "verify", "--env", "prod")
    assert proc.returncode == 1, proc.stdout
    assert "deploy/prod/evil/config.yaml at commit" in proc.stderr
    assert f"{PROD} at commit {commit[:12]} is not approved" in proc.stdout
    assert "Traceback" not in proc.stderr
    (_, event) = audit.rows(store, action="config.refused")
    assert event["after"]["commit"] == commit
    assert (event["target"], event["after"]["fallback"]) == ("model-0", v1)


def test_forged_or_copied_attestations_are_refused(ws: Workspace, store: Store) -> None:
    ship(ws, store)
    retrain(ws, "model-0", 0.05)
    att = ws.root / attestation_path("prod", "model-0")
    doc = json.loads(att.read_text())
    _hand_commit(ws)  # the old attestation stays beside the new bytes
    verifier = Verifier(ws)
    config = (ws.root / PROD).read_text()
    assert "bytes differ" in verifier.check("prod", "model-0", config, att.read_text())
    import hashlib

    doc["config_sha256"] = hashlib.sha256(config.encode()).hexdigest()
    assert "not signed by a trusted key" in verifier.check(
        "prod", "model-0", config, json.dumps(doc)
    )
    assert "no approval attestation" in verifier.check("prod", "model-0", config, None)
    # An ungated env needs none: test keeps serving what apply deployed.
    assert approved_env(ws, "test", str(_git.head(ws.root))).refused == []


def test_an_approved_promotion_serves_the_new_version(
    ws: Workspace, store: Store, tmp_path: Path
) -> None:
    v1 = ship(ws, store)
    retrain(ws, "model-0", 0.05)
    req = promote(ws, store, ["model-0"], actor="alice")
    done = _run(ws, "approve", str(req["id"]), "--as", "bob")
    assert done.returncode == 0, done.stderr
    v2 = served(ws, "prod", "model-0")
    assert v2 not in (None, v1)
    server = Served(ws, tmp_path)
    try:
        assert server.infer("model-0")["model_version"] == v2
        assert "mw_serving_unapproved_configs{" not in server.metrics()
    finally:
        log = server.stop()
    assert "not approved" not in log
    proc = _run(ws, "verify", "--env", "prod", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [(m["model"], m["version"], m["ok"]) for m in report["models"]] == [
        ("model-0", v2, True)
    ]


HOOK = """#!/bin/sh
# Holds `mw approve` at one exact step: after git committed an update (or, with
# MW_TEST_ON_DELETE, the deletion) of a ref matching MW_TEST_PAUSE_REF.
[ "$1" = committed ] || exit 0
[ -n "$MW_TEST_PAUSE_REF" ] || exit 0
while read -r old new ref; do
  case "$ref" in
    $MW_TEST_PAUSE_REF)
      deleted=no; [ "$new" = "$MW_TEST_ZERO" ] && deleted=yes
      if [ "$deleted" = "${MW_TEST_ON_DELETE:-no}" ]; then touch "$MW_TEST_MARKER"; sleep 600; fi ;;
  esac
done
exit 0
"""


@pytest.mark.parametrize(
    ("step", "pause_ref", "on_delete"),
    [
        ("intent recorded, main not moved", "refs/modelworks/merging/*", "no"),
        ("main merged, registry not updated", "refs/heads/main", "no"),
        ("registry and audit updated, intent cleared", "refs/modelworks/merging/*", "yes"),
    ],
)
def test_sigkill_during_approve_then_approve_again_completes_it(
    ws: Workspace, store: Store, tmp_path: Path, step: str, pause_ref: str, on_delete: str
) -> None:
    before = served(ws, "prod", "model-0")
    req = promote(ws, store, ["model-0", "model-1"], actor="alice")
    hook = Path(git(ws, "rev-parse", "--git-path", "hooks").strip())
    hook = hook if hook.is_absolute() else ws.root / hook
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "reference-transaction").write_text(HOOK)
    (hook / "reference-transaction").chmod(0o755)
    marker = tmp_path / "paused"
    proc = _mw(
        ws,
        "approve",
        str(req["id"]),
        "--as",
        "bob",
        env={
            "MW_TEST_PAUSE_REF": pause_ref,
            "MW_TEST_MARKER": str(marker),
            "MW_TEST_ZERO": "0" * 40,
            "MW_TEST_ON_DELETE": on_delete,
        },
    )
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"mw approve never reached: {step}"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # mw approve, git and the hook, as kill -9 of the group
    proc.wait()
    if on_delete == "no":
        assert get_state(store, req["id"]) == "open"
        refused = _run(ws, "reject", str(req["id"]), "--reason", "too late", "--as", "carol")
        assert refused.returncode != 0
        assert f"run `mw approve {req['id']}` to complete it" in refused.stderr

    again = _run(ws, "approve", str(req["id"]), "--as", "bob", "--json")
    assert again.returncode == 0, again.stderr
    shown = _run(ws, "promotion", str(req["id"]), "--json")
    doc = json.loads(shown.stdout)
    tip = _git.head(ws.root)
    assert (doc["state"], doc["merge_commit"]) == ("merged", tip)
    assert git(ws, "rev-parse", f"{tip}^2").strip() == req["head_commit"]
    assert git(ws, "for-each-ref", "refs/modelworks/").strip() == ""
    assert git(ws, "status", "--porcelain").strip() == ""
    for item in doc["items"]:
        assert served(ws, "prod", item["model"]) == item["to"]
    assert served(ws, "prod", "model-0") != before
    with store.session() as s:
        rows = s.scalars(select(Deployment).where(Deployment.env == "prod")).all()
    assert sorted((d.version, d.commit) for d in rows) == sorted(
        (i["to"], tip) for i in doc["items"]
    )
    assert len(audit.rows(store, action="promotion.merged")) == 1
    prod = [e for e in audit.rows(store, action="deployment") if e["after"]["env"] == "prod"]
    assert sorted(e["after"]["version"] for e in prod) == sorted(i["to"] for i in doc["items"])
    assert approved_env(ws, "prod", str(tip)).refused == []


def get_state(store: Store, request_id: int) -> str:
    from modelworks.gitops.promote import get_promotion

    return str(get_promotion(store, request_id)["state"])


def test_attest_adopts_configs_approved_before_attestations(ws: Workspace, store: Store) -> None:
    v1 = ship(ws, store)
    # As an upgraded workspace has it: merged by an approved promotion, no approval.json.
    att = attestation_path("prod", "model-0")
    git(ws, "rm", "-q", att)
    git(ws, "commit", "-q", "-m", "a workspace from before attestations")
    (ws.root / config_path("prod", "model-1")).parent.mkdir(parents=True)
    (ws.root / config_path("prod", "model-1")).write_text(
        (ws.root / config_path("test", "model-1")).read_text()
    )
    _git.commit(ws.root, [config_path("prod", "model-1")], "hand commit")
    assert {r.model for r in approved_env(ws, "prod", str(_git.head(ws.root))).refused} == {
        "model-0",
        "model-1",
    }
    proc = _run(ws, "attest", "--env", "prod", "--as", "admin", "--json")
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["adopted"] == [{"model": "model-0", "promotion": 1}]
    assert [u["path"] for u in result["unproven"]] == [config_path("prod", "model-1")]
    check = approved_env(ws, "prod", str(_git.head(ws.root)))
    assert [r.model for r in check.refused] == ["model-1"]
    assert check.configs["model-0"].version == v1
    assert json.loads((ws.root / att).read_text())["approvers"] == ["bob"]


def test_verify_env_arguments_are_checked(
    capsys: pytest.CaptureFixture[str], ws: Workspace
) -> None:
    from modelworks.testing import run_cli

    code, _out, err = run_cli(capsys, "verify", "-C", str(ws.root))
    assert (code, "pass --env ENV" in err) == (1, True)
    code, _out, err = run_cli(capsys, "verify", "--env", "../../x", "-C", str(ws.root))
    assert code == 1
    assert "environment '../../x' is not in modelworks.yaml" in err
    code, out, err = run_cli(capsys, "verify", "--env", "test", "-C", str(ws.root))
    assert code == 0, err
    assert "verified 3 config(s) of test" in out
    code, _out, err = run_cli(capsys, "attest", "--env", "test", "-C", str(ws.root))
    assert (code, "needs no approvals" in err) == (1, True)


def test_a_hand_commit_to_prod_is_not_exported(ws: Workspace, store: Store, tmp_path: Path) -> None:
    # Exported KServe manifests are another way to serve prod: they carry the approved version.
    v1 = ship(ws, store)
    retrain(ws, "model-0", 0.05)
    commit, v2 = _hand_commit(ws)
    assert v2 != v1
    out = tmp_path / "k8s"
    settings = ws.root / "modelworks.yaml"
    settings.write_text(settings.read_text() + "oci:\n  registry: registry.example:5000\n")
    _git.commit(ws.root, ["modelworks.yaml"], "oci registry")
    proc = _run(ws, "export", "kserve", "--env", "prod", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"{PROD} (commit {commit[:10]}) is not approved" in proc.stderr
    assert f"exporting {v1} instead" in proc.stderr
    manifest = (out / "model-0.yaml").read_text()
    assert f":{v1}" in manifest
    assert v2 not in manifest
