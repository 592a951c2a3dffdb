"""A pipeline's own save(): the registered model file is the one it wrote, and what serving
cannot load is refused at apply time, never registered or deployed."""

from __future__ import annotations

import numpy as np
import pytest

from modelworks import _git
from modelworks.apply import apply
from modelworks.gitops.deploy import read_env
from modelworks.registry.queries import show
from modelworks.registry.store import Store
from modelworks.runs.executor import InlineExecutor
from modelworks.serving.loader import ModelLoader
from modelworks.testing import (
    TINY_PIPELINE,
    make_workspace,
    small_fleet,
    write_pipeline,
    write_spec,
)
from modelworks.workspace import Workspace

SAVES = {
    "skops": """

def save(model, output_dir):
    import skops.io as sio
    sio.dump(model, output_dir / "churn-classifier.skops")
    (output_dir / "README.txt").write_text("trained by a custom save")
""",
    "onnx": """

def save(model, output_dir, data):
    from skl2onnx import to_onnx
    sample = data["X_train"][:1].astype(np.float32)
    onx = to_onnx(model, sample, target_opset={"": 17, "ai.onnx.ml": 3})
    (output_dir / "scorer.onnx").write_bytes(onx.SerializeToString())
""",
    "named": """

def save(model, output_dir):
    import skops.io as sio
    sio.dump(model, output_dir / "a.skops")
    sio.dump(model, output_dir / "b.skops")
    return "b.skops"
""",
    "unloadable": """

def save(model, output_dir):
    (output_dir / "weights.bin").write_bytes(b"not a model any server loads")
""",
    "ambiguous": """

def save(model, output_dir):
    import skops.io as sio
    sio.dump(model, output_dir / "a.skops")
    sio.dump(model, output_dir / "b.skops")
""",
    "wrong-name": """

def save(model, output_dir):
    import skops.io as sio
    sio.dump(model, output_dir / "model.skops")
    return "elsewhere.skops"
""",
}
RUNTIMES = {"onnx": "onnx"}


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Store, object]:
    ws = make_workspace(tmp_path_factory.mktemp("custom-save") / "ws")
    small_fleet(ws, models=0, datasets=1)
    for kind, save in SAVES.items():
        write_pipeline(ws, kind, source=TINY_PIPELINE + save, commit=False)
        write_spec(
            ws,
            f"m-{kind}",
            "data/set0/data.csv",
            pipeline=kind,
            commit=False,
            runtime_name=RUNTIMES.get(kind, "sklearn"),
        )
    _git.commit(ws.root, ["models", "pipelines"], "models with their own save()")
    store = Store(ws.registry_url)
    return ws, store, apply(ws, store, executor=InlineExecutor(), actor="line")


@pytest.mark.parametrize(
    ("kind", "model_file"),
    [("skops", "churn-classifier.skops"), ("onnx", "scorer.onnx"), ("named", "b.skops")],
)
def test_custom_save_registers_the_real_model_file_and_serves(
    applied: tuple[Workspace, Store, object], kind: str, model_file: str
) -> None:
    ws, store, result = applied
    name = f"m-{kind}"
    assert name in [t["name"] for t in result.trained]  # type: ignore[attr-defined]
    cfg = read_env(ws.deploy_repo, "test")[name]
    loader = ModelLoader(ws)
    assert loader.metadata(cfg)["model_file"] == model_file
    model = loader.load(cfg)
    X = np.loadtxt(ws.root / "data/set0/data.csv", delimiter=",", skiprows=1, ndmin=2)[:, :-1]
    assert np.asarray(model.predict(X[:3])).shape == (3,)
    assert show(store, name)["latest"]["status"] == "registered"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("unloadable", "save() wrote no file serving can load: expected a sklearn model file "
         "(.skops, .joblib, .pkl, .pickle) in the output folder, found weights.bin"),
        ("ambiguous", "save() wrote several .skops files (a.skops, b.skops): return the model "
         "file's name"),
        ("wrong-name", "save() returned 'elsewhere.skops', which is not a file it wrote"),
    ],
)  # fmt: skip
def test_custom_save_serving_cannot_load_fails_at_apply_and_is_never_deployed(
    applied: tuple[Workspace, Store, object], kind: str, message: str
) -> None:
    ws, store, result = applied
    name = f"m-{kind}"
    failed = {f["name"]: f["error"] for f in result.failed}  # type: ignore[attr-defined]
    assert message in failed[name]
    assert name not in [t["name"] for t in result.trained]  # type: ignore[attr-defined]
    assert name not in read_env(ws.deploy_repo, "test")
    assert not (ws.deploy_repo / "deploy/test" / name).exists()
    assert (
        show(store, name)["latest"] is None or show(store, name)["latest"]["status"] != "registered"
    )


def test_failed_save_is_not_retried(applied: tuple[Workspace, Store, object]) -> None:
    _ws, store, _ = applied
    from modelworks.registry.queries import runs

    assert len(runs(store, model="m-unloadable", limit=10)) == 1
