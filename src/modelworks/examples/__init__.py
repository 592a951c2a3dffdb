"""The example and demo fleets: pipelines shipped with the package, data from scikit-learn."""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PIPELINES_DIR = Path(__file__).with_name("pipelines")
CLASSIFICATION = "classification-training-pipeline"
FORECASTING = "forecasting-training-pipeline"
ANOMALY = "anomaly-detection-pipeline"
KUBEFLOW = "kubeflow-classification-pipeline"  # a Kubeflow pipeline: needs the kfp extra


def copy_pipeline(name: str, pipelines_dir: Path) -> Path:
    """Copy a shipped pipeline folder into a workspace."""
    dest = pipelines_dir / name
    shutil.copytree(PIPELINES_DIR / name, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _write_csv(path: Path, header: list[str], table: np.ndarray, fmt: str = "%.6g") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, table, delimiter=",", header=",".join(header), comments="", fmt=fmt)
    return path


def sklearn_dataset(name: str, path: Path) -> Path:
    """One of scikit-learn's bundled datasets as CSV, label last."""
    from sklearn import datasets

    loader: Callable[..., Any] = getattr(datasets, f"load_{name}")
    bunch = loader()
    names = [str(n).replace(",", " ").replace(" ", "_") for n in bunch.feature_names]
    table = np.column_stack([bunch.data, bunch.target])
    return _write_csv(path, [*names, "target"], table)


def demand_dataset(path: Path, store: int, days: int = 365, shift: float = 0.0) -> Path:
    """Synthetic daily demand for one store: weekly season, promotions, price, weather."""
    rng = np.random.default_rng(1000 + store)
    day = np.arange(days)
    dow = day % 7
    promo = (rng.random(days) < 0.15).astype(float)
    price = 10 + rng.normal(0, 0.5, days)
    temp = 15 + 10 * np.sin(2 * np.pi * day / 365) + rng.normal(0, 2, days)
    base = 50 + 5 * store % 40
    demand = base + 8 * (dow >= 5) + 15 * promo - 3 * (price - 10) + 0.4 * temp + shift
    demand += rng.normal(0, 3, days)
    table = np.column_stack([dow, day % 365 // 7, promo, price, temp, demand])
    return _write_csv(
        path, ["day_of_week", "week", "promo", "price", "temperature", "demand"], table
    )


def sensor_dataset(path: Path, machine: int, rows: int = 1000) -> Path:
    """Synthetic sensor readings of one machine with about 5% anomalies (label last)."""
    rng = np.random.default_rng(2000 + machine)
    normal = rng.normal([60, 1.2, 300, 0.5], [3, 0.1, 10, 0.05], size=(rows, 4))
    labels = (rng.random(rows) < 0.05).astype(float)
    normal[labels == 1] += rng.normal(
        [15, 0.6, 60, 0.3], [5, 0.2, 20, 0.1], size=(int(labels.sum()), 4)
    )
    table = np.column_stack([normal, labels])
    return _write_csv(path, ["temperature", "vibration", "rpm", "current", "anomaly"], table)


def spec(
    name: str,
    pipeline: str,
    dataset: str,
    runtime: str = "sklearn",
    hyperparameters: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A spec in the reference system's format."""
    return {
        "data_source": {"type": "dvc", "dataset": dataset},
        "model_name": name,
        "kubeflow_pipeline": pipeline,
        "kubeflow_pipeline_version": f"{pipeline}-v1.0.0",
        "runtime_name": runtime,
        "model_hyperparameters": hyperparameters or {},
        **extra,
    }


def _relative(root: Path, path: Path) -> str:
    return str(path.relative_to(root))


def write_spec(models_dir: Path, payload: dict[str, Any]) -> Path:
    path = models_dir / f"{payload['model_name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


CLASSIFICATION_VARIANTS: list[tuple[str, dict[str, Any], str]] = [
    ("logreg", {"C": 1.0}, "sklearn"),
    ("logreg-c01", {"C": 0.1}, "sklearn"),
    ("logreg-onnx", {"C": 1.0}, "onnx"),
    ("forest", {"model": "random_forest", "n_estimators": 30}, "sklearn"),
    ("forest-deep", {"model": "random_forest", "n_estimators": 30, "max_depth": 8}, "sklearn"),
]


def example_fleet(root: Path) -> list[tuple[Path, list[dict[str, Any]]]]:
    """The small `mw init --example` fleet: three pipelines (one Kubeflow), three datasets, six
    specs."""
    data = root / "data"
    iris = sklearn_dataset("iris", data / "iris" / "iris.csv")
    wine = sklearn_dataset("wine", data / "wine" / "wine.csv")
    store = demand_dataset(data / "demand" / "store-001.csv", 1)
    rel = functools.partial(_relative, root)
    gate = {"min": {"accuracy": 0.8}}
    return [
        (
            iris,
            [
                spec("iris-classifier", CLASSIFICATION, rel(iris), gates=gate),
                spec("iris-classifier-onnx", CLASSIFICATION, rel(iris), "onnx", gates=gate),
                spec("iris-kubeflow", KUBEFLOW, rel(iris), hyperparameters={"C": 1.0}, gates=gate),
            ],
        ),
        (
            wine,
            [
                spec("wine-classifier", CLASSIFICATION, rel(wine), gates=gate),
                spec(
                    "wine-forest",
                    CLASSIFICATION,
                    rel(wine),
                    hyperparameters={"model": "random_forest", "n_estimators": 30},
                ),
            ],
        ),
        (
            store,
            [spec("demand-store-001", FORECASTING, rel(store), hyperparameters={"alpha": 1.0})],
        ),
    ]


def demo_fleet(
    root: Path, stores: int = 30, machines: int = 12
) -> list[tuple[Path, list[dict[str, Any]]]]:
    """The `mw demo` fleet: 20 classifiers, a forecaster per store, a detector per machine."""
    data = root / "data"
    rel = functools.partial(_relative, root)
    fleet: list[tuple[Path, list[dict[str, Any]]]] = []
    for ds in ("iris", "wine", "breast_cancer", "digits"):
        path = sklearn_dataset(ds, data / ds / f"{ds}.csv")
        slug = ds.replace("_", "-")
        specs = [
            spec(
                f"{slug}-{suffix}",
                CLASSIFICATION,
                rel(path),
                runtime,
                dict(hp),
                gates={"min": {"accuracy": 0.7}},
                labels={"team": "vision" if ds == "digits" else "tabular"},
            )
            for suffix, hp, runtime in CLASSIFICATION_VARIANTS
        ]
        if ds == "iris":  # one variant as a Kubeflow pipeline (kfp.local runs are slow)
            specs[1] = spec(
                "iris-kubeflow",
                KUBEFLOW,
                rel(path),
                hyperparameters={"C": 0.1},
                gates={"min": {"accuracy": 0.7}},
                labels={"team": "tabular"},
            )
        fleet.append((path, specs))
    for i in range(1, stores + 1):
        path = demand_dataset(data / "demand" / f"store-{i:03d}.csv", i)
        hp = {"model": "gradient_boosting", "n_estimators": 50} if i % 5 == 0 else {"alpha": 1.0}
        fleet.append(
            (
                path,
                [
                    spec(
                        f"demand-store-{i:03d}",
                        FORECASTING,
                        rel(path),
                        hyperparameters=hp,
                        gates={"max": {"rmse": 10.0}},
                        labels={"team": "supply"},
                    )
                ],
            )
        )
    for i in range(1, machines + 1):
        path = sensor_dataset(data / "sensors" / f"machine-{i:02d}.csv", i)
        fleet.append(
            (
                path,
                [
                    spec(
                        f"anomaly-machine-{i:02d}",
                        ANOMALY,
                        rel(path),
                        hyperparameters={"contamination": 0.05},
                        monitoring={"threshold": 0.2, "action": "alert"},
                        labels={"team": "maintenance"},
                    )
                ],
            )
        )
    return fleet
