"""Synthetic fleets for the benchmarks: N specs over a few hundred datasets and three pipelines.

Model i uses pipeline i % 3. Dataset 0 is shared by the first 100 models (the "one dataset
changes, 100 models retrain" case); the others are spread round-robin over the rest.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

ROWS, FEATURES = 1000, 10
HOT_DATASET_MODELS = 100
PIPELINES = ("clf-a", "clf-b", "clf-c")

PIPELINE = '''\
"""Benchmark pipeline {name}: LogisticRegression on a CSV (label last), 75/25 split."""
import numpy as np
from sklearn.linear_model import LogisticRegression

MAX_ITER = {max_iter}


def prepare(data_path, params):
    table = np.loadtxt(data_path, delimiter=",", skiprows=1, ndmin=2)
    X, y = table[:, :-1], table[:, -1].astype(int)
    cut = int(len(X) * 0.75)
    return {{"X_train": X[:cut], "y_train": y[:cut], "X_test": X[cut:], "y_test": y[cut:]}}


def train(data, params):
    model = LogisticRegression(C=params.get("C", 1.0), max_iter=MAX_ITER)
    return model.fit(data["X_train"], data["y_train"])


def evaluate(model, data):
    return {{"accuracy": float((model.predict(data["X_test"]) == data["y_test"]).mean())}}
'''


def model_name(i: int) -> str:
    """The name of model i."""
    return f"m{i:05d}"


def dataset_of(i: int, datasets: int) -> int:
    """The dataset index model i trains on."""
    if i < HOT_DATASET_MODELS or datasets == 1:
        return 0
    return 1 + (i - HOT_DATASET_MODELS) % (datasets - 1)


def dataset_path(d: int) -> str:
    """Workspace-relative path of dataset d."""
    return f"data/set{d:04d}/data.csv"


def datasets_for(n: int) -> int:
    """A few hundred datasets for a big fleet (about 30 models each), at least 2."""
    return max(2, min(300, n // 30))


def write_csv(path: Path, seed: int) -> None:
    """A separable two-class CSV of ROWS x FEATURES with the label last."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(ROWS, FEATURES))
    y = (X @ rng.normal(size=FEATURES) > 0).astype(int)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ",".join([*(f"f{i}" for i in range(FEATURES)), "label"])
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", header=header, comments="", fmt="%.5g")


def spec(i: int, datasets: int) -> dict[str, object]:
    """The reference-format spec of model i."""
    pipe = PIPELINES[i % len(PIPELINES)]
    return {
        "data_source": {"type": "dvc", "dataset": dataset_path(dataset_of(i, datasets))},
        "model_name": model_name(i),
        "kubeflow_pipeline": pipe,
        "kubeflow_pipeline_version": f"{pipe}-v1.0.0",
        "runtime_name": "sklearn",
        "model_hyperparameters": {"C": round(0.5 + (i % 17) / 8, 4)},
    }


def build(
    root: Path, n: int, datasets: int | None = None, registry_url: str | None = None
) -> dict[str, object]:
    """A committed workspace at root with n specs (registry: SQLite in the workspace, or
    `registry_url`); returns what was built."""
    from modelworks.data.add import add
    from modelworks.testing import make_workspace

    d = datasets or datasets_for(n)
    ws = (
        make_workspace(root, registry={"url": registry_url})
        if registry_url
        else make_workspace(root)
    )
    for k, name in enumerate(PIPELINES):
        folder = ws.pipelines_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "version").write_text("v1.0.0\n")
        (folder / "pipeline.py").write_text(PIPELINE.format(name=name, max_iter=200 + k))
    for j in range(d):
        path = ws.root / dataset_path(j)
        write_csv(path, seed=j)
        add(ws, path, update_specs=False, commit=False)  # before the specs: nothing to bump
    ws.models_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (ws.models_dir / f"{model_name(i)}.json").write_text(json.dumps(spec(i, d), indent=2))
    git(root, "add", "-A", "models", "pipelines", "data")
    git(root, "commit", "-q", "-m", f"benchmark fleet: {n} models, {d} datasets")
    return {"root": str(root), "models": n, "datasets": d, "pipelines": len(PIPELINES)}


def git(root: Path, *args: str) -> str:
    """Run git in root and return its stdout."""
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout


def seed_registry(root: Path) -> int:
    """Register every planned model as if it had been applied (fingerprints only, no training).

    Plan on an unchanged fleet needs a registry that knows every fingerprint; training 9,000
    models here would take an hour, so the versions are written straight from the plan.
    """
    from modelworks.pipelines.catalog import snapshot
    from modelworks.plan import plan
    from modelworks.registry.models import Model, ModelVersion, PipelineVersion
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

    ws = Workspace.load(root)
    store = Store(ws.registry_url)
    p = plan(ws, store)
    todo = [m for m in p.models if m.action in ("create", "update")]
    with store.session() as s:
        for ref in {
            (m.pipeline.name, m.pipeline.version): m.pipeline for m in todo if m.pipeline
        }.values():
            snap = snapshot(ref.source, ref.hash, ws.state_dir / "pipelines")
            s.add(
                PipelineVersion(
                    name=ref.name, version=ref.version, hash=ref.hash, snapshot=str(snap)
                )
            )
        rows = [
            Model(name=m.name, pipeline=m.spec.pipeline, spec_path=f"models/{m.name}.json")
            for m in todo
        ]
        s.add_all(rows)
        s.flush()
        s.add_all(
            ModelVersion(
                model_id=row.id,
                version=m.version,
                fingerprint=m.fingerprint,
                status="registered",
                inputs=m.inputs,
                metrics={"accuracy": 1.0},
            )
            for row, m in zip(rows, todo, strict=True)
        )
    store.close()
    return len(todo)
