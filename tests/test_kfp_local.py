"""Kubeflow pipelines (kfp SDK 2) run locally with kfp.local as modelworks pipelines: the Model
artifact is registered and served, the Metrics artifact's values are its metrics."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("kfp")

from modelworks import _git
from modelworks.apply import apply
from modelworks.data.add import add
from modelworks.gitops.deploy import read_env
from modelworks.plan import plan
from modelworks.registry.queries import run_log, runs, show
from modelworks.registry.store import Store
from modelworks.runs.executor import InlineExecutor
from modelworks.serving.loader import ModelLoader
from modelworks.testing import make_workspace, mw, write_dataset, write_pipeline, write_spec
from modelworks.workspace import Workspace

DATA = "data/set0/data.csv"

# The reference system's shape: train writes `model: Output[Model]` (no suffix: kfp names it),
# evaluate logs to `metrics: Output[Metrics]`; Kubernetes-only calls on the train task.
REFERENCE = """\
from kfp import dsl, kubernetes
from kfp.dsl import Input, Metrics, Model, Output


@dsl.component(base_image="python:3.11", packages_to_install=["scikit-learn", "skops"])
def train(data_source: dict, hyperparameters: dict, model: Output[Model]):
    import numpy as np
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    table = np.loadtxt(data_source["local_path"], delimiter=",", skiprows=1)
    fitted = LogisticRegression(C=float(hyperparameters["C"]), max_iter=200)
    fitted.fit(table[:, :-1], table[:, -1].astype(int))
    sio.dump(fitted, model.path)


@dsl.component(base_image="python:3.11")
def evaluate(data_source: dict, model: Input[Model], metrics: Output[Metrics]):
    import numpy as np
    import skops.io as sio

    table = np.loadtxt(data_source["local_path"], delimiter=",", skiprows=1)
    fitted = sio.load(model.path, trusted=sio.get_untrusted_types(file=model.path))
    metrics.log_metric("accuracy", float(fitted.score(table[:, :-1], table[:, -1].astype(int))))
    metrics.log_metric("rows", len(table))


@dsl.pipeline
def reference(data_source: dict, hyperparameters: dict, model_name: str):
    trained = train(data_source=data_source, hyperparameters=hyperparameters)
    kubernetes.use_secret_as_env(trained, secret_name="s3", secret_key_to_env={"k": "K"})
    kubernetes.mount_pvc(trained, pvc_name="scratch", mount_path="/scratch")
    evaluate(data_source=data_source, model=trained.outputs["model"])
"""

SEVERAL = """\
from kfp import dsl
from kfp.dsl import Metrics, Model, Output


@dsl.component(base_image="python:3.11")
def train(
    data_source: dict, baseline: Output[Model], model: Output[Model], metrics: Output[Metrics]
):
    import numpy as np
    import skops.io as sio
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    table = np.loadtxt(data_source["local_path"], delimiter=",", skiprows=1)
    X, y = table[:, :-1], table[:, -1].astype(int)
    sio.dump(DummyClassifier().fit(X, y), baseline.path + ".skops")
    baseline.path += ".skops"
    sio.dump(LogisticRegression(max_iter=200).fit(X, y), model.path + ".skops")
    model.path += ".skops"
    metrics.log_metric("accuracy", 0.875)


@dsl.pipeline
def several(data_source: dict):
    train(data_source=data_source)
"""

NO_MODEL = """\
from kfp import dsl
from kfp.dsl import Metrics, Output


@dsl.component(base_image="python:3.11")
def evaluate(metrics: Output[Metrics]):
    metrics.log_metric("accuracy", 1.0)


@dsl.pipeline
def no_model(version: str):
    evaluate()
"""

FAILS = """\
from kfp import dsl
from kfp.dsl import Model, Output


@dsl.component(base_image="python:3.11")
def train(model: Output[Model]):
    raise ValueError("the label column is empty")


@dsl.pipeline
def fails():
    train()
"""

PIPELINES = {
    "kfp-ref": REFERENCE,
    "kfp-several": SEVERAL,
    "kfp-none": NO_MODEL,
    "kfp-fails": FAILS,
}


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Store, object]:
    ws = make_workspace(tmp_path_factory.mktemp("kfp-local") / "ws")
    write_dataset(ws, DATA)
    add(ws, ws.root / DATA, commit=False)
    for name, source in PIPELINES.items():
        write_pipeline(ws, name, source=source, commit=False)
        write_spec(
            ws,
            f"m-{name}",
            DATA,
            pipeline=name,
            commit=False,
            model_hyperparameters={"C": 0.5},
            gates={"min": {"accuracy": 0.8}},
        )
    _git.commit(ws.root, ["models", "pipelines", "data"], "kubeflow pipelines")
    store = Store(ws.registry_url)
    return ws, store, apply(ws, store, executor=InlineExecutor(), actor="line")


def _table(ws: Workspace) -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(ws.root / DATA, delimiter=",", skiprows=1)
    return table[:, :-1], table[:, -1].astype(int)


def _log(store: Store, model: str) -> str:
    return run_log(store, model)[1]


def test_reference_pipeline_is_registered_with_its_logged_metrics_and_serves(
    applied: tuple[Workspace, Store, object],
) -> None:
    from sklearn.linear_model import LogisticRegression

    ws, store, result = applied
    assert "m-kfp-ref" in [t["name"] for t in result.trained]  # type: ignore[attr-defined]
    X, y = _table(ws)
    expected = LogisticRegression(C=0.5, max_iter=200).fit(X, y)
    latest = show(store, "m-kfp-ref")["latest"]
    assert latest["status"] == "registered"
    assert latest["metrics"] == {"accuracy": pytest.approx(expected.score(X, y)), "rows": 200.0}
    cfg = read_env(ws.deploy_repo, "test")["m-kfp-ref"]
    loader = ModelLoader(ws)
    assert loader.metadata(cfg)["model_file"] == "model.skops"  # kfp's bare `model`, sniffed
    assert np.array_equal(loader.load(cfg).predict(X[:20]), expected.predict(X[:20]))


def test_the_modelcar_of_a_kfp_model_verifies(
    applied: tuple[Workspace, Store, object], capsys: pytest.CaptureFixture[str]
) -> None:
    ws, _store, _ = applied
    code, out, err = mw(capsys, ws, "verify", "m-kfp-ref")
    assert code == 0, err
    assert "m-kfp-ref" in out


def test_only_declared_parameters_are_supplied_and_kubernetes_calls_warn_once_each(
    applied: tuple[Workspace, Store, object],
) -> None:
    _ws, store, _ = applied
    log = _log(store, "m-kfp-ref")
    assert "with parameters data_source, hyperparameters, model_name\n" in log  # no version
    assert log.count("WARNING kfp.kubernetes use_secret_as_env on task train is ignored") == 1
    assert log.count("WARNING kfp.kubernetes mount_pvc on task train is ignored") == 1
    assert "not installing packages locally (kfp, packages_to_install) for evaluate, train" in log
    assert "pip install" not in log
    assert "Traceback" not in log


def test_several_model_outputs_register_the_one_named_model(
    applied: tuple[Workspace, Store, object],
) -> None:
    ws, store, result = applied
    assert "m-kfp-several" in [t["name"] for t in result.trained]  # type: ignore[attr-defined]
    assert show(store, "m-kfp-several")["latest"]["metrics"] == {"accuracy": 0.875}
    model = ModelLoader(ws).load(read_env(ws.deploy_repo, "test")["m-kfp-several"])
    X, _ = _table(ws)
    assert len(set(model.predict(X))) == 2  # the logistic regression, not the constant baseline


def test_no_model_output_fails_clearly_and_is_not_retried(
    applied: tuple[Workspace, Store, object],
) -> None:
    ws, store, result = applied
    failed = {f["name"]: f["error"] for f in result.failed}  # type: ignore[attr-defined]
    assert "the kfp pipeline produced no Model artifact" in failed["m-kfp-none"]
    assert "Output[Model]" in failed["m-kfp-none"]
    assert len(runs(store, model="m-kfp-none", limit=10)) == 1
    assert "m-kfp-none" not in read_env(ws.deploy_repo, "test")


def test_a_failing_component_fails_the_run_with_its_error_in_the_log(
    applied: tuple[Workspace, Store, object],
) -> None:
    _ws, store, result = applied
    failed = {f["name"]: f["error"] for f in result.failed}  # type: ignore[attr-defined]
    assert failed["m-kfp-fails"] == (
        "kfp pipeline failed: Pipeline 'fails' finished with status FAILURE. "
        "Inner task failed: 'train'."
    )
    assert "ValueError: the label column is empty" in _log(store, "m-kfp-fails")
    assert len(runs(store, model="m-kfp-fails", limit=10)) == 1


def test_several_model_outputs_none_named_model_is_an_error(tmp_path: Path) -> None:
    from modelworks.errors import PipelineError
    from modelworks.pipelines.kfp_local import _Found, pick_model

    found = _Found()
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(b"x")
        found.models.append(("train", name, tmp_path / name))
    with pytest.raises(PipelineError, match=r"several Model artifacts \(train.a, train.b\)"):
        pick_model(found, "pipeline.py")
    found.models.append(("train", "model", tmp_path / "a"))
    assert pick_model(found, "pipeline.py") == tmp_path / "a"


def _bump(ws: Workspace, version: str) -> None:
    write_pipeline(ws, "kfp-ref", version=version, source=REFERENCE)
    write_spec(
        ws,
        "m-kfp-ref",
        DATA,
        pipeline="kfp-ref",
        version=version,
        model_hyperparameters={"C": 0.5},
        gates={"min": {"accuracy": 0.8}},
    )


def test_pipeline_version_bump_plans_a_retrain_of_only_its_model(
    applied: tuple[Workspace, Store, object],
) -> None:
    ws, store, _ = applied
    _bump(ws, "v2")
    changed = {c.name for c in plan(ws, store).changes}
    assert changed == {"m-kfp-ref", "m-kfp-none", "m-kfp-fails"}  # failed ones are still to do


@pytest.mark.slow
def test_pipeline_version_bump_retrains(applied: tuple[Workspace, Store, object]) -> None:
    ws, store, _ = applied
    before = show(store, "m-kfp-ref")["latest"]["version"]
    _bump(ws, "v3")
    result = apply(ws, store, names=["m-kfp-ref"], executor=InlineExecutor(), actor="line")
    assert [t["name"] for t in result.trained] == ["m-kfp-ref"]  # type: ignore[attr-defined]
    assert show(store, "m-kfp-ref")["latest"]["version"] not in (before, None)


@pytest.mark.slow
def test_the_example_kubeflow_pipeline_trains_gates_and_serves(tmp_path: Path) -> None:
    from modelworks.init import init

    ws = init(tmp_path / "ex", example=True)
    store = Store(ws.registry_url)
    result = apply(ws, store, names=["iris-kubeflow"], executor=InlineExecutor(), actor="line")
    assert [t["name"] for t in result.trained] == ["iris-kubeflow"]  # type: ignore[attr-defined]
    metrics = show(store, "iris-kubeflow")["latest"]["metrics"]
    assert set(metrics) == {"accuracy", "f1_macro"}
    assert metrics["accuracy"] >= 0.8
    model = ModelLoader(ws).load(read_env(ws.deploy_repo, "test")["iris-kubeflow"])
    X = np.loadtxt(ws.root / "data/iris/iris.csv", delimiter=",", skiprows=1)[:, :-1]
    assert set(model.predict(X)) == {0, 1, 2}


def test_without_kfp_a_kubeflow_pipeline_fails_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = make_workspace(tmp_path / "ws")
    write_dataset(ws, DATA)
    add(ws, ws.root / DATA, commit=False)
    write_pipeline(ws, "kfp-none", source=NO_MODEL, commit=False)
    write_spec(ws, "m-kfp", DATA, pipeline="kfp-none", commit=False)
    _git.commit(ws.root, ["models", "pipelines", "data"], "a kubeflow pipeline")
    monkeypatch.setitem(sys.modules, "kfp", None)  # `import kfp` raises ImportError
    store = Store(ws.registry_url)
    result = apply(ws, store, executor=InlineExecutor(), actor="line")
    error = {f["name"]: f["error"] for f in result.failed}["m-kfp"]
    assert "the kfp SDK is not installed: pip install 'modelworks[kfp]'" in error
    assert len(runs(store, model="m-kfp", limit=10)) == 1


def test_init_example_without_kfp_skips_the_kubeflow_model_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelworks.init import init

    monkeypatch.setitem(sys.modules, "kfp", None)
    ws = init(tmp_path / "ex", example=True)
    err = capsys.readouterr().err
    assert "iris-kubeflow skipped" in err
    assert "modelworks[kfp]" in err
    assert not (ws.models_dir / "iris-kubeflow.json").exists()
    assert (ws.models_dir / "iris-classifier.json").exists()
    assert not (ws.pipelines_dir / "kubeflow-classification-pipeline").exists()


def test_a_model_folder_or_a_bare_file_becomes_a_file_serving_loads(tmp_path: Path) -> None:
    import joblib
    import skops.io as sio
    from sklearn.dummy import DummyClassifier

    from modelworks.artifacts.modelfiles import custom_model_file
    from modelworks.pipelines.kfp_local import _copier

    fitted = DummyClassifier().fit([[0.0], [1.0]], [0, 1])
    folder = tmp_path / "model"
    folder.mkdir()
    sio.dump(fitted, folder / "clf.skops")
    (folder / "README.md").write_text("card")
    out = tmp_path / "out-folder"
    out.mkdir()
    assert _copier(folder, "sklearn")(out) is None
    assert custom_model_file("sklearn", out, None) == "clf.skops"
    for name, dump, suffix in (("skops", sio.dump, ".skops"), ("pickle", joblib.dump, ".joblib")):
        bare = tmp_path / name / "model"
        bare.parent.mkdir()
        dump(fitted, bare)
        (out := tmp_path / f"out-{name}").mkdir()
        assert _copier(bare, "sklearn")(out) == "model" + suffix
        assert (out / f"model{suffix}").read_bytes() == bare.read_bytes()
