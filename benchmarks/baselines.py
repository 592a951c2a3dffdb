"""Baselines timed in the same run: the parse floor, plain training loops, MLflow and DVC."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from fleet import PIPELINES, dataset_of, dataset_path, model_name, spec


def parse_floor(models_dir: Path) -> float:
    """Seconds to read and json.load every spec file (the least any plan must do)."""
    started = time.perf_counter()
    for path in sorted(models_dir.glob("*.json")):
        with path.open() as fh:
            json.load(fh)
    return time.perf_counter() - started


def git_status(root: Path) -> float:
    """Seconds for `git status --porcelain` in the workspace."""
    started = time.perf_counter()
    subprocess.run(["git", "status", "--porcelain"], cwd=root, check=True, capture_output=True)
    return time.perf_counter() - started


def fit_one(task: tuple[str, str, float, str]) -> float:
    """Load, split, fit, evaluate and skops-save one model like the benchmark pipeline does."""
    import numpy as np
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    name, data, c, out = task
    table = np.loadtxt(data, delimiter=",", skiprows=1, ndmin=2)
    X, y = table[:, :-1], table[:, -1].astype(int)
    cut = int(len(X) * 0.75)
    model = LogisticRegression(C=c, max_iter=200).fit(X[:cut], y[:cut])
    accuracy = float((model.predict(X[cut:]) == y[cut:]).mean())
    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    sio.dump(model, folder / "model.skops")
    (folder / "metrics.json").write_text(json.dumps({"accuracy": accuracy}))
    return accuracy


def tasks(root: Path, n: int, datasets: int, out: Path) -> list[tuple[str, str, float, str]]:
    """The same models the fleet declares, as (name, data file, C, output folder)."""
    return [
        (
            model_name(i),
            str(root / dataset_path(dataset_of(i, datasets))),
            float(spec(i, datasets)["model_hyperparameters"]["C"]),
            str(out),
        )  # type: ignore[index]
        for i in range(n)
    ]


def _single_thread() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    import sklearn.linear_model  # noqa: F401
    import skops.io  # noqa: F401


def loop(work: list[tuple[str, str, float, str]]) -> float:
    """Seconds for a plain single-process loop over the models."""
    _single_thread()
    started = time.perf_counter()
    for t in work:
        fit_one(t)
    return time.perf_counter() - started


def parallel_loop(work: list[tuple[str, str, float, str]], processes: int) -> float:
    """Seconds for the same loop over a multiprocessing Pool (pool start included)."""
    started = time.perf_counter()
    with get_context("fork").Pool(processes, initializer=_single_thread) as pool:
        pool.map(fit_one, work, chunksize=max(1, len(work) // (processes * 8)))
    return time.perf_counter() - started


MLFLOW_SCRIPT = """\
import json, sys, time
import numpy as np
import mlflow, mlflow.sklearn
from sklearn.linear_model import LogisticRegression

work = json.load(open(sys.argv[1]))
MLFLOW_3 = int(mlflow.__version__.split(".")[0]) >= 3  # log_model's name= (2.x: artifact_path=)
mlflow.set_tracking_uri(sys.argv[2])
mlflow.set_experiment("bench")
started = time.perf_counter()
for name, data, c, _ in work:
    with mlflow.start_run(run_name=name):
        mlflow.log_params({"C": c, "data": data})
        table = np.loadtxt(data, delimiter=",", skiprows=1, ndmin=2)
        X, y = table[:, :-1], table[:, -1].astype(int)
        cut = int(len(X) * 0.75)
        model = LogisticRegression(C=c, max_iter=200).fit(X[:cut], y[:cut])
        mlflow.log_metric("accuracy", float((model.predict(X[cut:]) == y[cut:]).mean()))
        where = {"name": "model"} if MLFLOW_3 else {"artifact_path": "model"}
        mlflow.sklearn.log_model(model, registered_model_name=name, input_example=X[:2], **where)
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def mlflow_run(work: list[tuple[str, str, float, str]], scratch: Path) -> dict[str, Any]:
    """MLflow tracking + model registry (SQLite backend) over the same models, one process."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return {"skipped": "mlflow is not installed (pip install 'modelworks[bench]')"}
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "work.json").write_text(json.dumps(work))
    (scratch / "bench_mlflow.py").write_text(MLFLOW_SCRIPT)
    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "bench_mlflow.py", "work.json", uri],
        cwd=scratch,
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["mlflow failed"]}
    inner = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
    return {"seconds": wall, "loop_seconds": inner}


DVC_TRAIN = """\
import json, sys
import numpy as np
import skops.io as sio
from sklearn.linear_model import LogisticRegression

name, data, c = sys.argv[1], sys.argv[2], float(sys.argv[3])
table = np.loadtxt(data, delimiter=",", skiprows=1, ndmin=2)
X, y = table[:, :-1], table[:, -1].astype(int)
cut = int(len(X) * 0.75)
model = LogisticRegression(C=c, max_iter=200).fit(X[:cut], y[:cut])
sio.dump(model, f"out/{name}/model.skops")
json.dump({"accuracy": float((model.predict(X[cut:]) == y[cut:]).mean())},
          open(f"out/{name}/metrics.json", "w"))
"""


def dvc_run(root: Path, work: list[tuple[str, str, float, str]], scratch: Path) -> dict[str, Any]:
    """`dvc repro` of a foreach stage over the same models, then `dvc status` unchanged."""
    dvc = shutil.which("dvc")
    if dvc is None:
        return {"skipped": "dvc is not installed (pip install 'modelworks[bench]')"}
    repo = scratch / "dvc-repo"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
    (repo / "train.py").write_text(DVC_TRAIN)
    items = {}
    for name, data, c, _ in work:
        rel = Path(data).relative_to(root).as_posix()
        if not (repo / rel).exists():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(data, repo / rel)
        (repo / "out" / name).mkdir(parents=True, exist_ok=True)
        items[name] = {"data": rel, "c": c}
    stage = {
        "foreach": items,
        "do": {
            "cmd": "mkdir -p out/${key} && python train.py ${key} ${item.data} ${item.c}",
            "deps": ["train.py", "${item.data}"],
            "outs": ["out/${key}/model.skops"],
            "metrics": [{"out/${key}/metrics.json": {"cache": False}}],
        },
    }
    import yaml

    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}, sort_keys=False))
    return {
        "repro_seconds": _timed(repo, [dvc, "repro", "-q"]),
        "status_seconds": _timed(repo, [dvc, "status", "-q"]),
    }


def _timed(cwd: Path, cmd: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode not in (0, 1):  # dvc status -q exits 1 when something changed
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-500:]}")
    return time.perf_counter() - started


__all__ = [
    "PIPELINES",
    "dvc_run",
    "git_status",
    "loop",
    "mlflow_run",
    "parallel_loop",
    "parse_floor",
    "tasks",
]


RESULTS = Path(__file__).parent / "results"  # git-ignored


def save_results(prefix: str, results: Any) -> Path:
    """Write a run's results to benchmarks/results/<prefix>-<UTC time>.json; its path."""
    from datetime import UTC, datetime

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{prefix}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    return path
