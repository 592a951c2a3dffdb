"""Spec parsing: the reference format verbatim, aliases, YAML, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelworks.spec import load_spec, load_specs

REFERENCE = {
    "data_source": {
        "type": "dvc",
        "dataset": "datasets/churn/data.parquet",
        "repo_url": "https://git.example.com/data.git",
        "dvc_hash": "5c2145f3f900c69fb20c0af2657b7876",
    },
    "model_name": "churn-predictor-model",
    "kubeflow_pipeline": "classification-training-pipeline",
    "kubeflow_pipeline_version": "classification-training-pipeline-v1.23.0",
    "runtime_name": "onnx",
    "model_hyperparameters": {"epochs": 1},
}


def _write(tmp_path: Path, payload: object, name: str = "m.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(payload) if name.endswith(".json") else str(payload))
    return path


def test_reference_spec_is_accepted_verbatim(tmp_path: Path) -> None:
    loaded = load_spec(_write(tmp_path, REFERENCE))
    assert loaded.error is None
    spec = loaded.spec
    assert spec is not None
    assert spec.name == "churn-predictor-model"
    assert spec.pipeline == "classification-training-pipeline"
    assert spec.version_label() == "v1.23.0"
    assert spec.runtime == "onnx"
    assert spec.hyperparameters == {"epochs": 1}
    assert spec.data_source.dvc_hash == "5c2145f3f900c69fb20c0af2657b7876"


def test_short_aliases_and_yaml(tmp_path: Path) -> None:
    text = (
        "name: demand\npipeline: forecast\npipeline_version: v2\nruntime: sklearn\n"
        "hyperparameters: {alpha: 0.5}\ndata_source: {type: local, path: 'data/*.csv'}\n"
        "gates: {min: {r2: 0.5}}\nschedule: '0 3 * * *'\n"
        "monitoring: {threshold: 0.3, action: retrain}\n"
    )
    loaded = load_spec(_write(tmp_path, text, "demand.yaml"))
    assert loaded.error is None, loaded.error
    spec = loaded.spec
    assert spec is not None
    assert (spec.name, spec.pipeline, spec.version_label()) == ("demand", "forecast", "v2")
    assert spec.gates.min == {"r2": 0.5}
    assert spec.monitoring is not None
    assert spec.monitoring.action == "retrain"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"model_hyperparamters": {}},
            r"field 'model_hyperparamters': unknown field\. Did you mean 'model_hyperparameters'\?",
        ),
        ({"runtime_name": "tensorflow"}, r"field 'runtime_name'.*unknown runtime 'tensorflow'"),
        ({"pipeline": "other"}, r"'kubeflow_pipeline' and 'pipeline' are the same field"),
        ({"model_hyperparameters": [1, 2]}, r"field 'model_hyperparameters'.*dictionary"),
        (
            {"data_source": {"type": "dvc", "dataset": "x", "dvc_hash": "nothex"}},
            r"field 'data_source\.dvc_hash'",
        ),
        ({"data_source": {"type": "ftp"}}, r"field 'data_source\.type'"),
        ({"schedule": "every day"}, r"field 'schedule'.*not a valid cron"),
        ({"model_name": "Bad Name!"}, r"field 'model_name'"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, change: dict[str, object], expected: str) -> None:
    loaded = load_spec(_write(tmp_path, {**REFERENCE, **change}))
    assert loaded.spec is None
    assert loaded.error is not None
    assert str(tmp_path / "m.json") in loaded.error
    assert pytest.importorskip("re").search(expected, loaded.error), loaded.error


def test_missing_field_and_invalid_json(tmp_path: Path) -> None:
    missing = {k: v for k, v in REFERENCE.items() if k != "kubeflow_pipeline"}
    assert "field 'kubeflow_pipeline': is required but missing" in str(
        load_spec(_write(tmp_path, missing)).error
    )
    broken = tmp_path / "broken.json"
    broken.write_text('{"model_name": "x",')
    err = load_spec(broken).error
    assert err is not None
    assert err.startswith(f"{broken}: not valid JSON")
    not_mapping = _write(tmp_path, "- a\n- b\n", "list.yaml")
    assert "expected a mapping" in str(load_spec(not_mapping).error)


def test_duplicate_names_are_errors_for_both(tmp_path: Path) -> None:
    _write(tmp_path, REFERENCE, "a.json")
    _write(tmp_path, REFERENCE, "b.json")
    _write(tmp_path, {**REFERENCE, "model_name": "other"}, "c.json")
    loaded = {p.path.name: p for p in load_specs(tmp_path)}
    assert loaded["a.json"].spec is None
    assert "declared twice" in str(loaded["a.json"].error)
    assert loaded["b.json"].spec is None
    assert loaded["c.json"].spec is not None
