"""Promotion requests on real git repositories and a real SQLite registry.

A fleet of three tiny models is trained once per process (`apply` with real training),
then copied for each test, so every test starts with a real workspace serving three
registered versions in test and nothing in prod.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from test_forge import REPO, TOKEN, FakeGitHub, _handler

from modelworks import _git
from modelworks.apply import apply
from modelworks.errors import (
    ConfigError,
    ConflictError,
    DeployError,
    NotFoundError,
    PermissionDeniedError,
)
from modelworks.gitops.deploy import config_path
from modelworks.gitops.promote import approve, get_promotion, list_promotions, promote, reject
from modelworks.gitops.rollback import history
from modelworks.registry import audit
from modelworks.registry.models import Approval, Deployment, Model
from modelworks.registry.store import Store
from modelworks.runs.executor import InlineExecutor
from modelworks.testing import make_workspace, small_fleet, write_spec
from modelworks.workspace import CONFIG_FILE, ForgeSettings, Workspace

_TEMPLATES: dict[str, Path] = {}


MODELS = ["model-0", "model-1", "model-2"]


def _build(root: Path, separate: bool) -> None:
    settings = {}
    if separate:
        deploy = root / "deploy"
        _git.init(deploy)
        (deploy / "README.md").write_text("the deploy repository\n")
        _git.commit(deploy, ["README.md"], "deploy repo")
        settings = {"paths": {"deploy": "../deploy"}}
    ws = make_workspace(root / "ws", **settings)
    small_fleet(ws)
    write_spec(
        ws,
        "model-2",
        "data/set0/data.csv",
        model_hyperparameters={"C": 3.0},
        labels={"team": "growth"},
    )
    _git.commit(ws.root, ["models"], "label model-2")
    store = Store(ws.registry_url)
    result = apply(ws, store, executor=InlineExecutor(), actor="line")
    assert result.ok, result.to_dict()
    assert len(result.deployed) == 3
    store.close()


def trained_copy(
    tmp_path: Path, factory: pytest.TempPathFactory, separate: bool = False
) -> Workspace:
    """A copy of a trained three-model workspace (built once per process)."""
    kind = "separate" if separate else "same"
    if kind not in _TEMPLATES:
        root = factory.mktemp(f"fleet-{kind}")
        _build(root, separate)
        _TEMPLATES[kind] = root
    dest = tmp_path / "fleet"
    shutil.copytree(_TEMPLATES[kind], dest, symlinks=True)
    return Workspace.load(dest / "ws")


def retrain(ws: Workspace, name: str, c: float) -> str:
    """Change a model's hyperparameter and apply it: a new version, deployed to test."""
    spec = ws.models_dir / f"{name}.json"
    data = json.loads(spec.read_text())
    data["model_hyperparameters"] = {"C": c}
    spec.write_text(json.dumps(data))
    _git.commit(ws.root, [spec], f"retrain {name}")
    result = apply(
        ws, Store(ws.registry_url), names=[name], executor=InlineExecutor(), actor="line"
    )
    assert [t["name"] for t in result.trained] == [name]
    return str(result.trained[0]["version"])


def git(ws_or_repo: Workspace | Path, *args: str) -> str:
    repo = ws_or_repo.deploy_repo if isinstance(ws_or_repo, Workspace) else ws_or_repo
    return _git.git(repo, *args)


def served(ws: Workspace, env: str, name: str, ref: str = "HEAD") -> str | None:
    text = _git.show(ws.deploy_repo, ref, config_path(env, name))
    return yaml.safe_load(text)["version"] if text else None


@pytest.fixture
def ws(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return trained_copy(tmp_path, tmp_path_factory)


@pytest.fixture
def store(ws: Workspace) -> Store:
    return Store(ws.registry_url)


def test_promote_builds_the_branch_without_touching_the_work_tree(
    ws: Workspace, store: Store
) -> None:
    (ws.root / "notes.txt").write_text("work in progress\n")
    (ws.root / "models" / "model-0.json").write_text('{"edited": true}')
    git(ws, "add", "models/model-0.json")
    before = (
        git(ws, "status", "--porcelain"),
        git(ws, "diff", "--cached"),
        git(ws, "rev-parse", "HEAD"),
    )

    req = promote(ws, store, ["model-0", "model-1"], actor="alice")

    assert (req["id"], req["branch"], req["state"], req["author"]) == (
        1,
        "promote/1",
        "open",
        "alice",
    )
    assert req["required_approvals"] == 1
    assert req["approvals"] == []
    after = (
        git(ws, "status", "--porcelain"),
        git(ws, "diff", "--cached"),
        git(ws, "rev-parse", "HEAD"),
    )
    assert after == before
    assert not (ws.root / "deploy" / "prod").exists()
    tree = git(ws, "ls-tree", "-r", "--name-only", "promote/1", "deploy/prod").split()
    assert tree == [config_path("prod", "model-0"), config_path("prod", "model-1")]
    for name in ("model-0", "model-1"):
        assert _git.show(ws.root, "promote/1", config_path("prod", name)) == _git.show(
            ws.root, "HEAD", config_path("test", name)
        )
    assert git(ws, "rev-parse", "promote/1^").strip() == req["base_commit"] == before[2].strip()
    assert (
        git(ws, "log", "-1", "--format=%an|%s", "promote/1").strip()
        == "alice|promote(prod): model-0, model-1 from test"
    )
    items = {i["model"]: i for i in req["items"]}
    assert items["model-0"]["from"] is None
    assert items["model-0"]["to"] == served(ws, "test", "model-0")
    assert items["model-0"]["metrics"]["accuracy"]["delta"] is None  # nothing served in prod yet
    assert get_promotion(store, 1)["items"] == req["items"]
    assert [r["id"] for r in list_promotions(store, "open")] == [1]


def test_the_author_cannot_approve_their_own_request(ws: Workspace, store: Store) -> None:
    promote(ws, store, ["model-0"], actor="alice")
    with pytest.raises(
        PermissionDeniedError, match="alice opened promotion request 1 and cannot approve it"
    ):
        approve(ws, store, 1, actor="alice")
    assert get_promotion(store, 1)["state"] == "open"
    with store.session() as s:
        assert s.scalars(select(Approval)).all() == []


def test_approval_merges_records_deployments_audit_and_history(ws: Workspace, store: Store) -> None:
    base = git(ws, "rev-parse", "HEAD").strip()
    promote(ws, store, ["model-0", "model-1"], actor="alice")
    req = approve(ws, store, 1, actor="bob", comment="metrics look fine")

    assert req["state"] == "merged"
    assert req["approvals"] == ["bob"]
    merge = req["merge_commit"]
    assert git(ws, "rev-parse", "HEAD").strip() == merge
    assert git(ws, "rev-parse", f"{merge}^1", f"{merge}^2").split() == [base, req["head_commit"]]
    assert (
        git(ws, "log", "-1", "--format=%an|%s").strip()
        == "bob|Merge promotion #1: Promote model-0, model-1 to prod"
    )
    assert served(ws, "prod", "model-0") == served(ws, "test", "model-0")
    assert (ws.root / config_path("prod", "model-1")).read_text() == (
        ws.root / config_path("test", "model-1")
    ).read_text()
    assert git(ws, "status", "--porcelain").strip() == ""
    with store.session() as s:
        deps = s.execute(
            select(Model.name, Deployment.kind, Deployment.actor, Deployment.commit)
            .join(Model)
            .where(Deployment.env == "prod")
            .order_by(Model.name)
        ).all()
    assert deps == [("model-0", "promote", "bob", merge), ("model-1", "promote", "bob", merge)]
    events = [(e["action"], e["actor"]) for e in audit.rows(store, action="promotion.*")]
    assert events == [
        ("promotion.opened", "alice"),
        ("promotion.approved", "bob"),
        ("promotion.merged", "bob"),
    ]
    assert audit.verify(store) == []
    top = history(ws, "model-0", "prod")[0]
    assert (top["commit"], top["author"], top["version"]) == (
        merge,
        "bob",
        served(ws, "test", "model-0"),
    )


def test_two_approvals_each_approver_once(ws: Workspace, store: Store) -> None:
    ws.settings.environments["prod"].approvals = 2
    promote(ws, store, ["model-2"], actor="alice")
    assert approve(ws, store, 1, actor="bob")["state"] == "open"
    with pytest.raises(ConflictError, match=r"bob already approved promotion request 1 \(1/2"):
        approve(ws, store, 1, actor="bob")
    assert served(ws, "prod", "model-2") is None
    req = approve(ws, store, 1, actor="carol")
    assert req["state"] == "merged"
    assert req["approvals"] == ["bob", "carol"]
    assert "Approved-by: bob\nApproved-by: carol" in git(ws, "log", "-1", "--format=%B")


def test_reject_closes_and_merges_nothing(ws: Workspace, store: Store) -> None:
    head = git(ws, "rev-parse", "HEAD")
    promote(ws, store, ["model-0"], actor="alice")
    req = reject(ws, store, 1, actor="bob", reason="accuracy regressed")
    assert req["state"] == "rejected"
    assert req["closed_at"]
    assert req["decisions"][0] | {"at": None} == {
        "actor": "bob",
        "decision": "reject",
        "comment": "accuracy regressed",
        "at": None,
    }
    assert git(ws, "rev-parse", "HEAD") == head
    with pytest.raises(ConflictError, match="request 1 is rejected"):
        approve(ws, store, 1, actor="carol")
    with pytest.raises(ConfigError, match="needs a reason"):
        reject(ws, store, 1, actor="bob", reason=" ")
    assert [(e["action"], e["actor"]) for e in audit.rows(store, action="promotion.*")][-1] == (
        "promotion.rejected",
        "bob",
    )
    with store.session() as s:
        assert s.scalars(select(Deployment).where(Deployment.env == "prod")).all() == []


def test_a_change_to_the_same_files_on_main_refuses_the_merge(ws: Workspace, store: Store) -> None:
    promote(ws, store, ["model-0", "model-1"], actor="alice")
    promote(ws, store, ["model-0"], actor="carol")
    approve(ws, store, 2, actor="bob")  # model-0 changes on main after request 1 was opened
    head = git(ws, "rev-parse", "HEAD")
    with pytest.raises(
        ConflictError,
        match=r"^deploy/prod/model-0/config.yaml changed on main since "
        r"the request was opened; open a new request$",
    ):
        approve(ws, store, 1, actor="bob")
    assert git(ws, "rev-parse", "HEAD") == head
    assert get_promotion(store, 1)["state"] == "open"
    assert get_promotion(store, 1)["approvals"] == []
    assert served(ws, "prod", "model-1") is None


def test_unrelated_changes_on_main_merge_and_are_kept(ws: Workspace, store: Store) -> None:
    promote(ws, store, ["model-1"], actor="alice")
    (ws.root / "README.md").write_text("newer work on main\n")
    newer = _git.commit(ws.root, ["README.md"], "docs")
    (ws.root / "README.md").write_text("unstaged edit\n")
    (ws.root / "models" / "model-0.json").write_text('{"staged": true}')
    git(ws, "add", "models/model-0.json")
    req = approve(ws, store, 1, actor="bob")
    assert git(ws, "rev-parse", f"{req['merge_commit']}^1").strip() == newer
    assert git(ws, "show", "HEAD:README.md") == "newer work on main\n"
    assert served(ws, "prod", "model-1") == served(ws, "test", "model-1")
    # the user's own edits survive the merge: staged stays staged, unstaged stays unstaged
    assert git(ws, "status", "--porcelain").splitlines() == [
        " M README.md",
        "M  models/model-0.json",
    ]
    assert (ws.root / "README.md").read_text() == "unstaged edit\n"
    assert (ws.root / config_path("prod", "model-1")).is_file()
    assert git(ws, "log", "-1", "-g", "--format=%gs", "HEAD").strip() == "mw: merge promote/1"


def test_uncommitted_changes_under_deploy_refuse_the_merge(ws: Workspace, store: Store) -> None:
    promote(ws, store, ["model-1"], actor="alice")
    path = ws.root / config_path("test", "model-2")
    path.write_text(path.read_text() + "# local edit\n")
    with pytest.raises(
        DeployError,
        match=r"uncommitted changes under deploy/ \(deploy/test/model-2/"
        r"config.yaml\); commit or discard them",
    ):
        approve(ws, store, 1, actor="bob")
    assert get_promotion(store, 1)["state"] == "open"
    assert path.read_text().endswith("# local edit\n")


def test_all_changed_pipeline_and_label_selection_with_metric_deltas(
    ws: Workspace, store: Store
) -> None:
    with pytest.raises(ConfigError, match="name the models to promote, or pass --all-changed"):
        promote(ws, store, actor="alice")
    assert [
        i["model"] for i in promote(ws, store, labels=["team=growth"], actor="alice")["items"]
    ] == ["model-2"]
    approve(ws, store, 1, actor="bob")
    with pytest.raises(DeployError, match="nothing to promote"):
        promote(ws, store, pipeline="no-such-pipeline", actor="alice")
    req = promote(ws, store, ["model-2", "model-1", "model-0"], pipeline="tiny", actor="alice")
    assert [i["model"] for i in req["items"]] == ["model-1", "model-0"]
    assert req["unchanged"] == ["model-2"]  # already served in prod
    approve(ws, store, 2, actor="bob")
    with pytest.raises(DeployError, match="nothing to promote: prod already serves"):
        promote(ws, store, all_changed=True, actor="alice")

    old = served(ws, "prod", "model-0")
    new = retrain(ws, "model-0", 0.01)
    req = promote(ws, store, all_changed=True, actor="alice")
    (item,) = req["items"]
    assert (item["model"], item["from"], item["to"]) == ("model-0", old, new)
    acc = item["metrics"]["accuracy"]
    assert acc["delta"] == round(acc["to"] - acc["from"], 6)


def test_bad_selections_are_clear_errors(ws: Workspace, store: Store) -> None:
    with pytest.raises(NotFoundError, match=r"'model-9' is not deployed in test.*Did you mean"):
        promote(ws, store, ["model-9"], actor="alice")
    with pytest.raises(ConfigError, match=r"environment 'prd' is not in modelworks\.yaml.*'prod'"):
        promote(ws, store, ["model-0"], to="prd", actor="alice")
    with pytest.raises(ConfigError, match="--label expects key=value"):
        promote(ws, store, labels=["team"], actor="alice")
    with pytest.raises(ConfigError, match="unknown request state 'opened'; expected one of open"):
        list_promotions(store, "opened")
    ws.settings.paths.deploy = "deploy"  # a folder of the workspace repo, not a repository
    with pytest.raises(DeployError, match="is a folder inside another git repository"):
        promote(ws, store, ["model-0"], actor="alice")
    ws.settings.paths.deploy = "nowhere"
    with pytest.raises(DeployError, match=r"deploy repository .*nowhere does not exist"):
        promote(ws, store, ["model-0"], actor="alice")
    with pytest.raises(NotFoundError, match="no promotion request 7"):
        approve(ws, store, 7, actor="bob")
    assert list_promotions(store) == []


def test_an_env_without_required_approvals_merges_at_once(ws: Workspace, store: Store) -> None:
    ws.settings.environments["staging"] = ws.settings.environments["prod"].model_copy(
        update={"approvals": 0}
    )
    req = promote(ws, store, ["model-0"], to="staging", actor="alice")
    assert req["state"] == "merged"
    assert served(ws, "staging", "model-0") == served(ws, "test", "model-0")


def test_a_separate_deploy_repository(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    ws = trained_copy(tmp_path, tmp_path_factory, separate=True)
    store = Store(ws.registry_url)
    assert ws.deploy_repo != ws.root
    assert served(ws, "test", "model-0")
    ws_head = _git.head(ws.root)
    promote(ws, store, ["model-0"], actor="alice")
    assert _git.head(ws.deploy_repo, "promote/1")
    assert _git.head(ws.root, "promote/1") is None
    req = approve(ws, store, 1, actor="bob")
    assert served(ws, "prod", "model-0") == served(ws, "test", "model-0")
    assert (ws.deploy_repo / config_path("prod", "model-0")).is_file()
    assert _git.head(ws.deploy_repo) == req["merge_commit"]
    assert _git.head(ws.root) == ws_head
    assert not (ws.root / "deploy" / "prod").exists()


def test_a_bare_deploy_repository_merges_with_plumbing(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    ws = trained_copy(tmp_path, tmp_path_factory, separate=True)
    bare = tmp_path / "deploy.git"
    git(ws, "clone", "-q", "--bare", str(ws.deploy_repo), str(bare))
    ws.settings.paths.deploy = str(bare)
    store = Store(ws.registry_url)
    promote(ws, store, ["model-1", "model-2"], actor="alice")
    req = approve(ws, store, 1, actor="bob")
    assert _git.head(bare, "main") == req["merge_commit"]
    assert len(git(bare, "rev-list", "--parents", "-n1", "main").split()) == 3
    assert served(ws, "prod", "model-2", "main") == served(ws, "test", "model-2", "main")


def test_github_forge_opens_and_merges_the_pull_request(ws: Workspace, store: Store) -> None:
    fake = FakeGitHub()
    fake.branches |= {"promote/1", "promote/2"}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        ws.settings.forge = ForgeSettings(
            provider="github",
            repo=REPO,
            token_env="MW_TEST_GH",
            api_url=f"http://127.0.0.1:{server.server_address[1]}",
        )
        env = {"MW_TEST_GH": TOKEN}
        req = promote(ws, store, ["model-0"], actor="alice", environ=env)
        assert (req["forge"], req["forge_id"], req["forge_url"]) == (
            "github",
            "1",
            f"https://github.com/{REPO}/pull/1",
        )
        opened = fake.pr(1)
        assert (opened["head"]["ref"], opened["base"]["ref"]) == ("promote/1", "main")
        assert "| model-0 | - |" in opened["body"]
        head = _git.head(ws.root)
        fake.unmergeable.add(1)
        with pytest.raises(DeployError, match="405: Pull Request is not mergeable"):
            approve(ws, store, 1, actor="bob", environ=env)
        assert get_promotion(store, 1)["state"] == "open"
        fake.unmergeable.clear()
        merged = approve(ws, store, 1, actor="bob", environ=env)  # the same approval, retried
        assert merged["state"] == "merged"
        assert fake.pr(1)["merged"] is True
        assert merged["merge_commit"] is None
        assert _git.head(ws.root) == head
        promote(ws, store, ["model-1"], actor="alice", environ=env)
        reject(ws, store, 2, actor="bob", reason="not yet", environ=env)
        assert fake.pr(2)["state"] == "closed"
        assert fake.comments[2] == ["Rejected by bob: not yet"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_config_file_approvals_are_read_from_modelworks_yaml(ws: Workspace, store: Store) -> None:
    cfg = yaml.safe_load((ws.root / CONFIG_FILE).read_text())
    cfg["environments"]["prod"]["approvals"] = 3
    (ws.root / CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    req = promote(Workspace.load(ws.root), store, ["model-0"], actor="alice")
    assert req["required_approvals"] == 3


def fleet_of(root: Path, n: int) -> tuple[Workspace, Store]:
    """A workspace whose test env serves v2 and prod v1 of `n` models, with registry rows."""
    from modelworks.gitops.deploy import DeployConfig, deploy
    from modelworks.registry.models import ModelVersion

    ws = make_workspace(root / "big")
    store = Store(ws.registry_url)
    names = [f"m{i:04d}" for i in range(n)]
    with store.session() as s:
        models = [Model(name=name, pipeline="tiny") for name in names]
        s.add_all(models)
        s.flush()
        s.add_all(
            ModelVersion(
                model_id=m.id,
                version=f"{v}{i:09d}",
                fingerprint=f"{v}{i:063d}",
                status="registered",
                metrics={"accuracy": 0.8 + 0.1 * (v == "b")},
            )
            for i, m in enumerate(models)
            for v in "ab"
        )
    for env, v in (("prod", "a"), ("test", "b")):
        deploy(
            ws.root,
            env,
            [
                DeployConfig(
                    name=name,
                    image_repository=name,
                    image_namespace="mw",
                    version=f"{v}{i:09d}",
                    runtime="sklearn",
                    artifact_digest="sha256:" + "0" * 64,
                    artifact_uri=f"oci:.mw/oci/repos/{name}:{v}{i:09d}",
                )
                for i, name in enumerate(names)
            ],
            f"deploy {env}",
        )
    return ws, store


def timed_promotion(ws: Workspace, store: Store) -> tuple[float, float, dict[str, object]]:
    """Seconds to open a request for every changed model, and to approve and merge it."""
    started = time.perf_counter()
    req = promote(ws, store, all_changed=True, actor="alice")
    opened = time.perf_counter() - started
    started = time.perf_counter()
    req = approve(ws, store, req["id"], actor="bob")
    return opened, time.perf_counter() - started, req


@pytest.mark.slow  # about 2 s of git and SQLite work plus 3 s to generate the fleet
def test_one_thousand_models_in_one_request(tmp_path: Path) -> None:
    ws, store = fleet_of(tmp_path, 1000)
    opened, merged, req = timed_promotion(ws, store)
    assert req["models"] == 1000
    assert req["state"] == "merged"
    item = get_promotion(store, int(req["id"]))["items"][999]  # type: ignore[call-overload]
    assert (item["from"], item["to"]) == ("a000000999", "b000000999")
    assert item["metrics"]["accuracy"]["delta"] == 0.1
    assert served(ws, "prod", "m0999") == "b000000999"
    assert opened < 20, opened
    assert merged < 30, merged
