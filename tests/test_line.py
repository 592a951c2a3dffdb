"""The assembly line end to end: plan, apply, gates, packaging, registry, deploy to test."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from modelworks import _git
from modelworks.apply import apply
from modelworks.data.add import add
from modelworks.plan import plan
from modelworks.registry.queries import runs, show
from modelworks.registry.store import Store
from modelworks.runs.executor import LocalExecutor
from modelworks.testing import (
    TINY_PIPELINE,
    commit_paths,
    run_cli,
    write_dataset,
    write_pipeline,
    write_spec,
)
from modelworks.workspace import Workspace


def _apply(ws: Workspace, workers: int = 1, **kw):  # type: ignore[no-untyped-def]
    return apply(ws, Store(ws.registry_url), executor=LocalExecutor(workers), **kw)


def test_first_plan_creates_everything_and_apply_is_idempotent(fleet: Workspace) -> None:
    store = Store(fleet.registry_url)
    p = plan(fleet, store)
    assert p.summary == {"create": 3, "update": 0, "unchanged": 0, "error": 0}
    assert all(m.version == m.fingerprint[:10] for m in p.models)  # type: ignore[index]
    result = _apply(fleet, workers=2)
    assert sorted(t["name"] for t in result.trained) == ["model-0", "model-1", "model-2"]
    assert result.ok
    assert len(result.deployed) == 3
    assert result.commit
    again = _apply(fleet)
    assert again.trained == []
    assert sorted(again.skipped) == ["model-0", "model-1", "model-2"]
    assert again.commit is None
    assert plan(fleet, store).summary["unchanged"] == 3


def test_deploy_config_keys_and_commit(fleet: Workspace) -> None:
    result = _apply(fleet)
    cfg = yaml.safe_load((fleet.root / "deploy/test/model-1/config.yaml").read_text())
    for key in ("chart_path", "name", "image_repository", "image_namespace", "version"):
        assert key in cfg
    trained = {t["name"]: t for t in result.trained}
    assert cfg["version"] == trained["model-1"]["version"]
    assert cfg["artifact_digest"] == trained["model-1"]["digest"]
    assert _git.git(fleet.root, "status", "--porcelain", "deploy").strip() == ""
    assert "deploy: 3 model version(s)" in _git.git(fleet.root, "log", "-1", "--format=%B")


def test_show_artifact_is_readable_by_skopeo(fleet: Workspace) -> None:
    _apply(fleet)
    info = show(Store(fleet.registry_url), "model-0")
    art = info["artifact"]
    out = subprocess.run(
        ["skopeo", "inspect", f"oci:{art['oci_layout']}:{art['ref']}"],
        capture_output=True,
        text=True,
        check=True,
    )
    inspected = json.loads(out.stdout)
    assert inspected["Digest"] == art["digest"]
    manifest = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--raw", f"oci:{art['oci_layout']}:{art['ref']}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    notes = manifest["annotations"]
    assert notes["dev.modelworks.fingerprint"] == info["latest"]["fingerprint"]
    assert notes["dev.modelworks.data.hash"] == info["latest"]["lineage"]["data_hash"]
    assert notes["dev.modelworks.pipeline.version"] == "v1"
    assert notes["dev.modelworks.spec.commit"] == _git.head(
        fleet.root, "HEAD~1"
    )  # before the deploy commit
    assert "dev.modelworks.metrics.accuracy" in notes


def test_data_change_retrains_exactly_its_models(fleet: Workspace) -> None:
    _apply(fleet)
    path = fleet.root / "data/set1/data.csv"  # used by model-1 only (model-i uses set i % 2)
    write_dataset(fleet, "data/set1/data.csv", seed=99)
    old = json.loads((fleet.models_dir / "model-1.json").read_text())["data_source"]["dvc_hash"]
    add(fleet, path)
    p = plan(fleet, Store(fleet.registry_url))
    changed = {m.name: m for m in p.changes}
    assert list(changed) == ["model-1"]
    new = json.loads((fleet.models_dir / "model-1.json").read_text())["data_source"]["dvc_hash"]
    assert changed["model-1"].reasons == [f"data {old[:8]} -> {new[:8]}"]
    result = _apply(fleet)
    assert [t["name"] for t in result.trained] == ["model-1"]
    assert sorted(result.skipped) == ["model-0", "model-2"]


def test_hyperparameter_and_pipeline_version_reasons(fleet: Workspace) -> None:
    _apply(fleet)
    spec = fleet.models_dir / "model-0.json"
    raw = json.loads(spec.read_text())
    raw["model_hyperparameters"]["C"] = 5.0
    spec.write_text(json.dumps(raw))
    write_pipeline(fleet, version="v2", source=TINY_PIPELINE + "\n# v2\n")
    for i in (1, 2):
        p = fleet.models_dir / f"model-{i}.json"
        r = json.loads(p.read_text())
        r["kubeflow_pipeline_version"] = "tiny-v2" if i == 1 else "tiny-v1"
        p.write_text(json.dumps(r))
    commit_paths([fleet.models_dir], "specs")
    reasons = {m.name: m.reasons for m in plan(fleet, Store(fleet.registry_url)).models}
    assert reasons["model-0"] == ["hyperparameter C 1.0 -> 5.0"]
    assert reasons["model-1"] == ["pipeline v1 -> v2"]
    # model-2 stays pinned to v1: it runs the recorded snapshot and is unchanged.
    assert reasons["model-2"] == []


def test_pinned_old_version_trains_with_its_snapshot(fleet: Workspace) -> None:
    _apply(fleet)
    write_pipeline(
        fleet, version="v2", source=TINY_PIPELINE.replace("max_iter=200", "max_iter=300")
    )
    write_spec(fleet, "late-v1", "data/set0/data.csv")  # a new model pinned to the old version
    result = _apply(fleet)
    assert [t["name"] for t in result.trained] == ["late-v1"]
    info = show(Store(fleet.registry_url), "late-v1")
    assert info["latest"]["lineage"]["pipeline_version"] == "v1"
    v1 = show(Store(fleet.registry_url), "model-0")["latest"]["lineage"]["pipeline_hash"]
    assert info["latest"]["lineage"]["pipeline_hash"] == v1


def test_changed_pipeline_without_version_bump_is_refused(fleet: Workspace) -> None:
    _apply(fleet)
    (fleet.pipelines_dir / "tiny" / "pipeline.py").write_text(TINY_PIPELINE + "\n# edited\n")
    p = plan(fleet, Store(fleet.registry_url))
    assert p.summary["error"] == 3
    assert "pipelines/tiny changed since version v1 was first used" in p.models[0].reasons[0]
    assert "bump the version file" in p.models[0].reasons[0]


def test_gates_block_deploy_and_are_recorded(fleet: Workspace) -> None:
    spec = fleet.models_dir / "model-2.json"
    raw = json.loads(spec.read_text())
    raw["gates"] = {"min": {"accuracy": 1.01}}
    spec.write_text(json.dumps(raw))
    commit_paths([spec], "gate")
    result = _apply(fleet)
    assert [g["name"] for g in result.gated] == ["model-2"]
    assert "accuracy" in result.gated[0]["reasons"][0]
    assert "< min 1.01" in result.gated[0]["reasons"][0]
    assert not (fleet.root / "deploy/test/model-2").exists()
    assert (fleet.root / "deploy/test/model-1/config.yaml").exists()
    latest = show(Store(fleet.registry_url), "model-2")["latest"]
    assert latest["status"] == "gated"
    assert latest["artifact"]["digest"] is None
    # Same inputs, same outcome: a gated version is not retrained.
    assert _apply(fleet).gated == []


def test_no_regression_gate_against_test(fleet: Workspace) -> None:
    _apply(fleet)
    spec = fleet.models_dir / "model-0.json"
    raw = json.loads(spec.read_text())
    raw["gates"] = {"no_regression": ["accuracy"]}
    # Training on labels that are noise makes accuracy drop below what test serves.
    raw["model_hyperparameters"]["C"] = 1e-6
    spec.write_text(json.dumps(raw))
    commit_paths([spec], "no regression")
    result = _apply(fleet)
    names = [g["name"] for g in result.gated] + [t["name"] for t in result.trained]
    assert names == ["model-0"]
    if result.gated:
        assert "regressed" in result.gated[0]["reasons"][0]
        deployed = yaml.safe_load((fleet.root / "deploy/test/model-0/config.yaml").read_text())
        assert deployed["version"] != result.gated[0]["version"]


def test_failing_model_does_not_stop_the_fleet(fleet: Workspace) -> None:
    write_pipeline(
        fleet,
        name="broken",
        version="v1",
        source=TINY_PIPELINE.replace(
            "def train(data, params):",
            "def train(data, params):\n    raise ValueError('boom in train')",
        ),
    )
    write_spec(fleet, "bad-model", "data/set0/data.csv", pipeline="broken")
    result = _apply(fleet, workers=2)
    assert [f["name"] for f in result.failed] == ["bad-model"]
    assert "boom in train" in result.failed[0]["error"]
    assert len(result.trained) == 3
    assert not result.ok
    failed_runs = runs(Store(fleet.registry_url), model="bad-model")
    assert failed_runs[0]["status"] == "failed"
    log = Path(failed_runs[0]["log_path"]).read_text()
    assert "boom in train" in log
    assert "Traceback" in log
    # The next plan retries it and says why.
    again = {m.name: m for m in plan(fleet, Store(fleet.registry_url)).models}
    assert again["bad-model"].action == "create"
    assert any("retry: the last run failed" in r for r in again["bad-model"].reasons)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (
            lambda ws: write_spec(ws, "no-pipe", "data/set0/data.csv", pipeline="nope"),
            "pipeline 'nope' not found",
        ),
        (
            lambda ws: write_spec(ws, "old-ver", "data/set0/data.csv", version="v9"),
            "version 'v9' is unknown",
        ),
        (
            lambda ws: write_spec(
                ws,
                "no-cache",
                "data/set0/data.csv",
                data_source={"type": "dvc", "dataset": "data/set0/data.csv", "dvc_hash": "0" * 32},
            ),
            "is not in the cache",
        ),
        (lambda ws: write_spec(ws, "no-pointer", "data/none/data.csv"), "pointer file not found"),
        (lambda ws: (ws.models_dir / "garbage.json").write_text("{nope"), "not valid JSON"),
        (
            lambda ws: write_spec(
                ws,
                "s3-model",
                "x",
                data_source={"type": "s3", "bucket": "b", "endpoint_url": "http://127.0.0.1:9"},
            ),
            "S3 bucket 'b'",  # no credentials, or the endpoint is unreachable: named either way
        ),
    ],
)
def test_bad_input_is_one_model_error_and_the_rest_applies(
    fleet: Workspace, setup, message
) -> None:  # type: ignore[no-untyped-def]
    setup(fleet)
    result = _apply(fleet)
    assert len(result.errors) == 1
    assert message in result.errors[0]["error"]
    assert len(result.trained) == 3


def test_local_data_source(workspace: Workspace) -> None:
    write_pipeline(workspace)
    write_dataset(workspace, "raw/part.csv")
    write_spec(
        workspace,
        "local-model",
        "raw/part.csv",
        data_source={"type": "local", "path": "raw/part.csv"},
    )
    store = Store(workspace.registry_url)
    assert [t["name"] for t in _apply(workspace).trained] == ["local-model"]
    assert plan(workspace, store).summary["unchanged"] == 1
    write_dataset(workspace, "raw/part.csv", seed=5)
    p = plan(workspace, store)
    assert p.models[0].action == "update"
    assert p.models[0].reasons[0].startswith("data ")


def test_apply_prints_error_text_as_written(
    capsys: pytest.CaptureFixture[str], fleet: Workspace
) -> None:
    # A pipeline's error text is data, not Rich markup: brackets survive and nothing is styled away.
    write_pipeline(
        fleet,
        name="noisy",
        version="v1",
        source=TINY_PIPELINE.replace(
            "def train(data, params):",
            "def train(data, params):\n    raise ValueError('bad [red]value[/red] in [params]')",
        ),
    )
    write_spec(fleet, "noisy-model", "data/set0/data.csv", pipeline="noisy")
    code, out, _ = run_cli(capsys, "apply", "-C", str(fleet.root), "-j", "1")
    assert code == 1
    assert "bad [red]value[/red] in [params]" in out
    assert "1 failed" in out


def test_no_regression_baseline_is_the_signed_artifact_not_the_registry_row(
    fleet: Workspace,
) -> None:
    """Lowering the served version's accuracy in the registry must not let a worse model in."""
    import sqlite3

    _apply(fleet)
    served = yaml.safe_load((fleet.root / "deploy/test/model-0/config.yaml").read_text())
    db = sqlite3.connect(fleet.registry_url.split("///", 1)[1])
    with db:
        db.execute(
            "UPDATE model_versions SET metrics = ? WHERE version = ?",
            (json.dumps({"accuracy": 0.0}), served["version"]),
        )
    db.close()
    spec = fleet.models_dir / "model-0.json"
    raw = json.loads(spec.read_text())
    raw["gates"] = {"no_regression": ["accuracy"]}
    raw["model_hyperparameters"]["C"] = 1e-6  # noise labels: accuracy drops
    spec.write_text(json.dumps(raw))
    commit_paths([spec], "no regression against an edited row")
    result = _apply(fleet)
    assert [g["name"] for g in result.gated] == ["model-0"]
    assert "regressed" in result.gated[0]["reasons"][0]
    again = yaml.safe_load((fleet.root / "deploy/test/model-0/config.yaml").read_text())
    assert again["version"] == served["version"]
