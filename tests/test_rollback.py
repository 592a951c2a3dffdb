"""Rollback and history on real git repositories with really trained versions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from test_promote import git, retrain, served, trained_copy

from modelworks import _git
from modelworks.errors import DeployError, NotFoundError
from modelworks.gitops.deploy import config_path
from modelworks.gitops.promote import approve, promote
from modelworks.gitops.rollback import history, rollback
from modelworks.registry import audit
from modelworks.registry.models import Deployment, Model, ModelVersion
from modelworks.registry.store import Store
from modelworks.workspace import Workspace

PROD = config_path("prod", "model-0")


def ship(ws: Workspace, store: Store, name: str = "model-0") -> str:
    """Promote what test serves for `name` to prod and approve it; return the version."""
    req = promote(ws, store, [name], actor="alice")
    approve(ws, store, req["id"], actor="bob")
    version = served(ws, "prod", name)
    assert version is not None
    return version


@pytest.fixture
def two(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Workspace, Store, str, str]:
    """A workspace where prod served model-0 v1, then v2 (both promoted and merged)."""
    ws = trained_copy(tmp_path, tmp_path_factory)
    store = Store(ws.registry_url)
    v1 = ship(ws, store)
    retrain(ws, "model-0", 0.05)
    v2 = ship(ws, store)
    assert v1 != v2
    return ws, store, v1, v2


def test_rollback_to_the_previous_version(two: tuple[Workspace, Store, str, str]) -> None:
    ws, store, v1, v2 = two
    v1_text = _git.show(ws.root, "HEAD~2", PROD)  # as the first merge left it
    result = rollback(ws, store, "model-0", env="prod", actor="carol")

    assert (result["from"], result["to"]) == (v2, v1)
    assert result["commit"] == _git.head(ws.root)
    assert (ws.root / PROD).read_text() == v1_text
    assert git(ws, "status", "--porcelain").strip() == ""
    log = git(ws, "log", "-1", "--format=%an|%B").strip()
    assert log.startswith(f"carol|rollback(prod): model-0 {v2} -> {v1}\n")
    assert f"This reverts {PROD} to version {v1}" in log
    with store.session() as s:
        last = s.scalars(select(Deployment).order_by(Deployment.id.desc()).limit(1)).one()
    assert (last.env, last.version, last.kind, last.actor, last.commit) == (
        "prod",
        v1,
        "rollback",
        "carol",
        result["commit"],
    )
    (event,) = audit.rows(store, action="rollback")
    assert (event["actor"], event["target"], event["before"]["version"]) == ("carol", "model-0", v2)
    assert event["after"] == {"env": "prod", "version": v1, "commit": result["commit"]}

    rows = history(ws, "model-0", "prod")
    assert [(r["version"], r["author"]) for r in rows] == [(v1, "carol"), (v2, "bob"), (v1, "bob")]
    assert [r["previous"] for r in rows] == [v2, v1, None]
    assert rows[0]["message"] == f"rollback(prod): model-0 {v2} -> {v1}"
    assert rows[1]["message"].startswith("Merge promotion #2")
    assert rollback(ws, store, "model-0", actor="carol")["to"] == v2  # back again


def test_rollback_to_a_named_version(two: tuple[Workspace, Store, str, str]) -> None:
    ws, store, v1, v2 = two
    v3 = retrain(ws, "model-0", 0.2)  # registered and served in test, never in prod
    result = rollback(ws, store, "model-0", env="test", to=v1, actor="carol")
    cfg = yaml.safe_load((ws.root / config_path("test", "model-0")).read_text())
    with store.session() as s:
        row = s.scalars(select(ModelVersion).where(ModelVersion.version == v1)).one()
    assert (result["from"], result["to"], cfg["version"]) == (v3, v1, v1)
    assert cfg["artifact_digest"] == row.artifact_digest
    assert cfg["name"] == "model-0"
    assert "as of" in git(ws, "log", "-1", "--format=%B")
    assert rollback(ws, store, "model-0", to=v1, actor="carol")["to"] == v1
    assert served(ws, "prod", "model-0") == v1
    assert rollback(ws, store, "model-0", to=v2, actor="carol")["to"] == v2


def test_unknown_or_rejected_versions_are_refused(two: tuple[Workspace, Store, str, str]) -> None:
    ws, store, v1, v2 = two
    head = _git.head(ws.root)
    with pytest.raises(NotFoundError, match=r"model-0 has no version 'deadbeef00' in the registry"):
        rollback(ws, store, "model-0", to="deadbeef00", actor="carol")
    with store.session() as s:
        row = s.scalars(select(ModelVersion).where(ModelVersion.version == v1)).one()
        row.status, row.reason = "rejected", "scan: unsafe pickle opcode"
    with pytest.raises(DeployError, match=rf"version {v1} is rejected: scan: unsafe pickle opcode"):
        rollback(ws, store, "model-0", actor="carol")
    with pytest.raises(DeployError, match=f"already serves {v2} in prod"):
        rollback(ws, store, "model-0", to=v2, actor="carol")
    with pytest.raises(DeployError, match="model-9 is not deployed in prod"):
        rollback(ws, store, "model-9", to=v1, actor="carol")
    assert _git.head(ws.root) == head


def test_nothing_to_roll_back(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    ws = trained_copy(tmp_path, tmp_path_factory)
    store = Store(ws.registry_url)
    with pytest.raises(DeployError, match="model-0 is not deployed in prod"):
        rollback(ws, store, "model-0", actor="carol")
    with pytest.raises(NotFoundError, match="model-0 has never been deployed in prod"):
        history(ws, "model-0", "prod")
    version = ship(ws, store)
    with pytest.raises(
        DeployError, match=f"has served only {version} in prod; there is no earlier"
    ):
        rollback(ws, store, "model-0", actor="carol")
    assert [r["version"] for r in history(ws, "model-0", "test")] == [served(ws, "test", "model-0")]


def test_uncommitted_edit_refuses_the_rollback(two: tuple[Workspace, Store, str, str]) -> None:
    ws, store, _v1, _v2 = two
    (ws.root / PROD).write_text((ws.root / PROD).read_text() + "# hand edit\n")
    with pytest.raises(DeployError, match="has uncommitted changes; commit or discard them"):
        rollback(ws, store, "model-0", actor="carol")
    assert (ws.root / PROD).read_text().endswith("# hand edit\n")


def test_rollback_in_a_separate_and_a_bare_deploy_repo(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    ws = trained_copy(tmp_path, tmp_path_factory, separate=True)
    store = Store(ws.registry_url)
    v1 = ship(ws, store)
    retrain(ws, "model-0", 0.05)
    v2 = ship(ws, store)
    bare = tmp_path / "deploy.git"
    git(ws, "clone", "-q", "--bare", str(ws.deploy_repo), str(bare))
    result = rollback(ws, store, "model-0", actor="carol")
    assert (result["to"], served(ws, "prod", "model-0")) == (v1, v1)
    assert not (ws.root / "deploy" / "prod").exists()

    ws.settings.paths.deploy = str(bare)  # no work tree: the commit is built with plumbing
    result = rollback(ws, store, "model-0", actor="dora")
    assert (result["from"], result["to"]) == (v2, v1)
    assert _git.head(bare, "main") == result["commit"]
    assert history(ws, "model-0")[0]["author"] == "dora"
    with store.session() as s:
        kinds = s.scalars(
            select(Deployment.kind)
            .join(Model)
            .where(Deployment.env == "prod")
            .order_by(Deployment.id)
        ).all()
    assert kinds == ["promote", "promote", "rollback", "rollback"]


def test_rollback_keeps_the_users_other_edits(two: tuple[Workspace, Store, str, str]) -> None:
    ws, store, v1, _v2 = two
    (ws.root / "models" / "model-1.json").write_text('{"staged": true}')
    git(ws, "add", "models/model-1.json")
    (ws.root / "notes.txt").write_text("scratch\n")
    rollback(ws, store, "model-0", actor="carol")
    assert served(ws, "prod", "model-0") == v1
    assert yaml.safe_load((ws.root / PROD).read_text())["version"] == v1
    assert git(ws, "status", "--porcelain").splitlines() == [
        "M  models/model-1.json",
        "?? notes.txt",
    ]
