"""The gitops commands through `mw`'s entry point: exit codes, messages and --json."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_promote import retrain, served, trained_copy

from modelworks import _git
from modelworks.testing import mw, mw_json
from modelworks.workspace import Workspace


@pytest.fixture
def ws(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return trained_copy(tmp_path, tmp_path_factory)


def test_promote_approve_history_through_the_cli(
    capsys: pytest.CaptureFixture[str], ws: Workspace
) -> None:
    req = mw_json(capsys, ws, "promote", "model-0", "model-1", "--to", "prod", "--as", "alice")
    assert (req["id"], req["state"], req["branch"], req["models"]) == (1, "open", "promote/1", 2)

    code, _, err = mw(capsys, ws, "approve", "1", "--as", "alice")
    assert code == 77  # permission denied (README: exit codes)
    assert "error: alice opened promotion request 1 and cannot approve it" in err
    assert "Traceback" not in err

    code, out, _ = mw(capsys, ws, "promotion", "1")
    assert code == 0
    assert "Promote model-0, model-1 to prod" in out
    assert "approvals 0/1: none yet" in out
    assert "model-0" in out

    code, out, _ = mw(capsys, ws, "approve", "1", "--as", "bob")
    assert code == 0
    assert "Merged promotion request #1 as" in out
    assert served(ws, "prod", "model-0") == served(ws, "test", "model-0")

    rows = mw_json(capsys, ws, "history", "model-0", "--env", "prod")["history"]
    assert [(r["version"], r["author"]) for r in rows] == [(served(ws, "prod", "model-0"), "bob")]
    listed = mw_json(capsys, ws, "promotions", "--state", "merged")["promotions"]
    assert [(p["id"], p["approvals"]) for p in listed] == [(1, ["bob"])]
    assert mw_json(capsys, ws, "promotions", "--state", "open")["promotions"] == []
    code, out, _ = mw(capsys, ws, "history", "model-0")
    assert code == 0
    assert "Merge promotion #1" in out


def test_reject_and_its_required_reason(capsys: pytest.CaptureFixture[str], ws: Workspace) -> None:
    mw_json(capsys, ws, "promote", "--all-changed", "--as", "alice")
    code, _, err = mw(capsys, ws, "reject", "1", "--as", "bob")
    # A usage error; cli.main renders typer's vendored click errors as "unexpected" (exit 70)
    # until it recognises typer._click exceptions; either way nothing is rejected.
    assert code != 0
    assert "reason" in err
    code, out, _ = mw(capsys, ws, "reject", "1", "--as", "bob", "--reason", "too early")
    assert code == 0
    assert "Rejected promotion request #1: too early" in out
    shown = mw_json(capsys, ws, "promotion", "1")
    assert shown["state"] == "rejected"
    assert shown["decisions"][0]["comment"] == "too early"
    assert served(ws, "prod", "model-0") is None


def test_errors_are_one_red_line_and_a_non_zero_exit(
    capsys: pytest.CaptureFixture[str], ws: Workspace
) -> None:
    cases = [
        (("promotion", "99"), "error: no promotion request 99"),
        (("approve", "99", "--as", "bob"), "error: no promotion request 99"),
        (("promote", "--as", "alice"), "error: name the models to promote"),
        (("promote", "model-0", "--to", "prd", "--as", "a"), "'prd' is not in modelworks.yaml"),
        (("rollback", "model-0", "--as", "carol"), "model-0 is not deployed in prod"),
        (("history", "model-0"), "model-0 has never been deployed in prod"),
        (("push",), "error: no OCI registry configured"),
        (("export", "kserve", "--env", "qa", "--out", "x"), "environment 'qa' is not in"),
    ]
    for args, message in cases:
        code, _, err = mw(capsys, ws, *args)
        assert code == 1, (args, err)
        assert message in err, (args, err)
        assert len(err.strip().splitlines()) <= 3, err  # one (soft-wrapped) line


def test_rollback_through_the_cli(capsys: pytest.CaptureFixture[str], ws: Workspace) -> None:
    for c in (None, 0.05):
        if c is not None:
            retrain(ws, "model-0", c)
        req = mw_json(capsys, ws, "promote", "model-0", "--as", "alice")
        mw_json(capsys, ws, "approve", str(req["id"]), "--as", "bob")
    versions = [r["version"] for r in mw_json(capsys, ws, "history", "model-0")["history"]]
    code, _, err = mw(capsys, ws, "rollback", "model-0", "--to", "0000000000", "--as", "carol")
    assert code == 1
    assert "model-0 has no version '0000000000' in the registry" in err
    result = mw_json(capsys, ws, "rollback", "model-0", "--env", "prod", "--as", "carol")
    assert (result["from"], result["to"]) == (versions[0], versions[1])
    code, out, _ = mw(capsys, ws, "rollback", "model-0", "--as", "carol")
    assert code == 0
    assert f"rollback(prod): model-0 {versions[1]} -> {versions[0]}" in out


def test_export_argocd_and_kserve(
    capsys: pytest.CaptureFixture[str],
    ws: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out_dir = tmp_path / "argocd"
    result = mw_json(capsys, ws, "export", "argocd", "--out", str(out_dir))
    written = result["written"]
    assert [w for w in result["warnings"] if "has no `origin` remote" in w], result["warnings"]
    assert sorted(Path(p).name for p in written) == ["appset-prod.yaml", "appset-test.yaml"]
    test_doc = yaml.safe_load((out_dir / "appset-test.yaml").read_text())
    prod_doc = yaml.safe_load((out_dir / "appset-prod.yaml").read_text())
    assert test_doc["spec"]["generators"][0]["git"]["repoURL"] == str(ws.deploy_repo.resolve())
    assert "automated" in test_doc["spec"]["template"]["spec"]["syncPolicy"]
    assert "automated" not in prod_doc["spec"]["template"]["spec"]["syncPolicy"]

    _git.git(ws.root, "remote", "add", "origin", "https://git.example.com/acme/deploy.git")
    again = mw_json(capsys, ws, "export", "argocd", "--out", str(out_dir), "--revision", "main")
    assert not [w for w in again["warnings"] if "origin" in w]
    git_gen = yaml.safe_load((out_dir / "appset-prod.yaml").read_text())["spec"]["generators"][0]
    assert git_gen["git"]["repoURL"] == "https://git.example.com/acme/deploy.git"
    assert git_gen["git"]["revision"] == "main"
    mw_json(capsys, ws, "export", "argocd", "--out", str(out_dir), "--repo-url", "https://x/y.git")
    assert "repoURL: https://x/y.git" in (out_dir / "appset-test.yaml").read_text()

    monkeypatch.setenv("MW_OCI_REGISTRY", "registry.example.com:5000")
    k_dir = tmp_path / "kserve"
    written = mw_json(capsys, ws, "export", "kserve", "--env", "test", "--out", str(k_dir))[
        "written"
    ]
    assert len(written) == 3
    isvc = yaml.safe_load((k_dir / "model-1.yaml").read_text())
    version = served(ws, "test", "model-1")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == (
        f"oci://registry.example.com:5000/modelworks/model-1:{version}"
    )
