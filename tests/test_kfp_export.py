"""`mw export kfp`: plain and Kubeflow pipelines compiled to KFP IR YAML, re-loaded and checked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelworks.testing import mw, write_pipeline
from modelworks.workspace import Workspace

pytest.importorskip("kfp")

KFP_PIPELINE = """\
from kfp import dsl
from kfp.dsl import Metrics, Model, Output


@dsl.component(base_image="python:3.11")
def fit(data_source: dict, hyperparameters: dict, model: Output[Model], metrics: Output[Metrics]):
    with open(model.path, "w") as fh:
        fh.write(str(data_source))
    metrics.log_metric("accuracy", 0.9)


@dsl.pipeline(name="kfp-native")
def native(data_source: dict, hyperparameters: dict = {}, version: str = ""):
    fit(data_source=data_source, hyperparameters=hyperparameters)
"""


def export(capsys: Any, ws: Workspace, *args: str) -> dict[str, Any]:
    code, out, err = mw(capsys, ws, "export", "kfp", *args)
    assert code == 0, err
    return dict(yaml.safe_load(out))


def test_plain_pipeline_wraps_its_steps_as_components(capsys: Any, fleet: Workspace) -> None:
    ir = export(capsys, fleet, "tiny")
    assert ir["pipelineInfo"]["name"] == "tiny"
    assert set(ir["components"]) == {"comp-prepare", "comp-train", "comp-evaluate"}
    params = ir["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {"data_source", "hyperparameters", "model_name", "version"}
    assert params["data_source"]["parameterType"] == "STRUCT"  # the spec's, + local_path
    assert params["hyperparameters"]["parameterType"] == "STRUCT"
    tasks = ir["root"]["dag"]["tasks"]
    assert set(tasks) == {"prepare", "train", "evaluate"}
    assert tasks["train"]["dependentTasks"] == ["prepare"]
    assert sorted(tasks["evaluate"]["dependentTasks"]) == ["prepare", "train"]
    outputs = ir["components"]["comp-train"]["outputDefinitions"]["artifacts"]
    assert outputs["model"]["artifactType"]["schemaTitle"] == "system.Model"
    metrics = ir["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]["metrics"]
    assert metrics["artifactType"]["schemaTitle"] == "system.Metrics"
    # The user's steps travel in the IR: each task gets the folder as a constant.
    constant = tasks["train"]["inputs"]["parameters"]["sources"]["runtimeValue"]["constant"]
    files = json.loads(constant)
    source = (fleet.pipelines_dir / "tiny" / "pipeline.py").read_text()
    assert files["pipeline.py"] == source
    assert "def train(data, params)" in files["pipeline.py"]
    executor = ir["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert "def train(" in "".join(executor["command"])


def test_kfp_pipeline_compiles_as_written(
    capsys: Any, workspace: Workspace, tmp_path: Path
) -> None:
    write_pipeline(workspace, "native", "v3", KFP_PIPELINE)
    out = tmp_path / "native.yaml"
    code, stdout, err = mw(capsys, workspace, "export", "kfp", "native", "--out", str(out))
    assert code == 0, err
    assert str(out) in stdout
    ir = yaml.safe_load(out.read_text())
    assert ir["pipelineInfo"]["name"] == "kfp-native"
    assert set(ir["components"]) == {"comp-fit"}
    assert set(ir["root"]["inputDefinitions"]["parameters"]) == {
        "data_source",
        "hyperparameters",
        "version",
    }
    assert set(ir["root"]["dag"]["tasks"]) == {"fit"}


def test_unknown_pipeline_suggests_the_near_name(capsys: Any, fleet: Workspace) -> None:
    code, out, err = mw(capsys, fleet, "export", "kfp", "tinny")
    assert code == 1
    assert "pipeline 'tinny' not found" in err
    assert "Did you mean" in err
    assert "Traceback" not in err
    assert out == ""


def test_unknown_version_and_bad_out_are_clear(capsys: Any, fleet: Workspace) -> None:
    code, _, err = mw(capsys, fleet, "export", "kfp", "tiny@v9")
    assert code == 1
    assert "version 'v9' is unknown" in err
    code, _, err = mw(
        capsys, fleet, "export", "kfp", "tiny", "--out", str(fleet.root / "no/x.yaml")
    )
    assert code == 1
    assert "does not exist" in err
    code, _, err = mw(capsys, fleet, "export", "kfp", "tiny", "--out", str(fleet.root))
    assert code == 1
    assert "is a folder" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_compiled_plain_pipeline_runs_on_kfp_local(fleet: Workspace, tmp_path: Path) -> None:
    from kfp import components, local

    from modelworks.pipelines.kfp_compile import compile_folder

    path = tmp_path / "tiny.yaml"
    path.write_text(compile_folder(fleet.pipelines_dir / "tiny", "tiny", "v1"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    data = fleet.root / "data/set0/data.csv"
    components.load_component_from_file(str(path))(data_source={"local_path": str(data)})
    (model,) = (tmp_path / "root").glob("tiny-*/train/model/model.skops")
    assert model.stat().st_size > 0
    (metrics,) = (tmp_path / "root").glob("tiny-*/evaluate/metrics")
    assert 0.8 <= json.loads(metrics.read_text())["accuracy"] <= 1.0


def test_without_kfp_the_error_names_the_extra(fleet: Workspace) -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['kfp'] = None  # as if kfp were not installed\n"
        "from modelworks.cli import main; main(sys.argv[1:])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "export", "kfp", "tiny", "-C", str(fleet.root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "pip install 'modelworks[kfp]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
