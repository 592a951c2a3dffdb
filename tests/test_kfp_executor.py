"""`executor.kind: kfp`: `mw apply` submits to a Kubeflow Pipelines API (a test double of the
API server on 127.0.0.1 that checks every request) and registers what the runs produced."""

from __future__ import annotations

import functools
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kfp_server import FakeKFP, serve
from s3_server import S3Server, s3_server  # noqa: F401  (pytest fixture)

from modelworks.artifacts.oci import OCIStore
from modelworks.testing import make_workspace, mw, mw_json, small_fleet, write_pipeline, write_spec
from modelworks.workspace import Workspace

pytest.importorskip("kfp")

TOKEN = "kfp-test-token-123"
SERVED = {"accuracy": 0.875, "f1": 0.81}
V2_PIPELINE = "# v2: same steps, a new version\n"
NATIVE_PIPELINE = """\
from kfp import dsl
from kfp.dsl import Metrics, Model, Output


@dsl.component(base_image="python:3.11")
def fit(data_source: dict, hyperparameters: dict, model: Output[Model], metrics: Output[Metrics]):
    metrics.log_metric("accuracy", 0.9)


@dsl.pipeline(name="native")
def native(data_source: dict, hyperparameters: dict = {}, version: str = ""):
    fit(data_source=data_source, hyperparameters=hyperparameters)
"""


@functools.cache
def model_bytes(c: float) -> bytes:
    """What a real train step writes: a fitted sklearn model, saved with skops."""
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4))
    return bytes(sio.dumps(LogisticRegression(C=c).fit(X, (X[:, 0] > 0).astype(int))))


def write_model(folder: Path, params: dict[str, Any]) -> None:
    (folder / "model.skops").write_bytes(model_bytes(float(params["hyperparameters"]["C"])))


@pytest.fixture
def kfp_api(tmp_path: Path) -> Iterator[FakeKFP]:
    for c in (1.0, 2.0):  # built here, not in the server's request thread
        model_bytes(c)
    fake = FakeKFP(tmp_path / "pipeline-root", TOKEN, write_model, dict(SERVED))
    yield from serve(fake)


def kfp_workspace(
    tmp_path: Path, host: str, models: int = 2, timeout: float = 600, retries: int = 0, **kfp: Any
) -> Workspace:
    ws = make_workspace(
        tmp_path / "ws",
        executor={"kind": "kfp", "workers": 2, "retries": retries, "timeout": timeout},
        kfp={"host": host, "token_env": "MW_TEST_KFP_TOKEN", "poll_interval": 0.05, **kfp},
    )
    small_fleet(ws, models=models)
    return ws


def test_apply_trains_on_kfp_and_registers_the_served_metrics(
    tmp_path: Path, kfp_api: FakeKFP, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MW_TEST_KFP_TOKEN", TOKEN)
    ws = kfp_workspace(tmp_path, kfp_api.url, models=2)
    report = mw_json(capsys, ws, "apply")
    assert kfp_api.problems == []
    assert sorted(t["name"] for t in report["trained"]) == ["model-0", "model-1"]
    # One KFP pipeline for the modelworks pipeline, one version for v1: both jobs share it.
    assert [p["display_name"] for p in kfp_api.pipelines.values()] == ["tiny"]
    names = sorted(v["display_name"] for v in kfp_api.versions.values())
    assert names == ["tiny", "v1"]  # KFP names a pipeline's first version after it
    assert [u["kind"] for u in kfp_api.uploads] == ["pipeline", "version"]
    assert kfp_api.uploads[0]["parameters"] == [
        "data_source",
        "hyperparameters",
        "model_name",
        "version",
    ]
    # A run per job, with the supplied parameters.
    params = sorted(kfp_api.run_params(), key=lambda p: p["model_name"])
    assert [p["model_name"] for p in params] == ["model-0", "model-1"]
    assert params[1]["hyperparameters"] == {"C": 2.0}
    source = params[1]["data_source"]  # the spec's data_source, as kfp.local gets it
    assert (source["type"], source["dataset"]) == ("dvc", "data/set1/data.csv")
    assert "local_path" not in source
    versions = {t["name"]: t["version"] for t in report["trained"]}
    assert [p["version"] for p in params] == [versions[p["model_name"]] for p in params]
    shown = mw_json(capsys, ws, "show", "model-1")
    assert shown["versions"][0]["metrics"] == SERVED
    digest = shown["artifact"]["digest"]
    files = OCIStore(ws.oci_dir).extract(digest, tmp_path / "image")
    assert (files / "model.skops").is_file()  # the run's model file, packaged as a ModelCar
    assert json.loads((files / "metrics.json").read_text()) == SERVED

    # A new pipeline version: one more KFP version; the pipeline itself is reused.
    folder = ws.pipelines_dir / "tiny"
    write_pipeline(ws, "tiny", "v2", (folder / "pipeline.py").read_text() + V2_PIPELINE)
    write_spec(ws, "model-0", "data/set0/data.csv", version="v2", model_hyperparameters={"C": 1.0})
    again = mw_json(capsys, ws, "apply")
    assert [t["name"] for t in again["trained"]] == ["model-0"]
    assert [u["name"] for u in kfp_api.uploads] == ["tiny", "v1", "v2"]
    assert len(kfp_api.pipelines) == 1
    assert kfp_api.problems == []


@pytest.mark.integration
def test_artifacts_in_the_object_store_are_fetched_from_s3(
    tmp_path: Path,
    kfp_api: FakeKFP,
    s3_server: S3Server,  # noqa: F811
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MW_TEST_KFP_TOKEN", TOKEN)
    kfp_api.s3, kfp_api.bucket = s3_server.client(), s3_server.bucket()
    ws = kfp_workspace(tmp_path, kfp_api.url, models=1, s3_endpoint_url=s3_server.endpoint)
    report = mw_json(capsys, ws, "apply")
    assert kfp_api.problems == []
    (trained,) = report["trained"]
    assert trained["metrics"] == SERVED  # read from the metrics file in the bucket
    files = OCIStore(ws.oci_dir).extract(trained["digest"], tmp_path / "image")
    assert (files / "model.skops").read_bytes() == model_bytes(1.0)


def test_a_kubeflow_pipeline_gets_the_parameters_it_declares_and_a_sealed_token(
    tmp_path: Path, kfp_api: FakeKFP, capsys: Any
) -> None:
    from modelworks.registry.store import Store
    from modelworks.security.keys import seal_secret

    kfp_api.required = ("data_source",)
    ws = kfp_workspace(tmp_path, kfp_api.url, models=0, token_env=None, token_secret="KFP_TOKEN")
    write_pipeline(ws, "native", "v3", NATIVE_PIPELINE)
    write_spec(
        ws,
        "native-model",
        "data/set0/data.csv",
        pipeline="native",
        version="v3",
        model_hyperparameters={"C": 2.0},
    )
    seal_secret(ws, Store(ws.registry_url), "KFP_TOKEN", TOKEN.encode() + b"\n", actor="alice")
    report = mw_json(capsys, ws, "apply")
    assert kfp_api.problems == []
    assert [t["name"] for t in report["trained"]] == ["native-model"]
    # model_name is not declared by this pipeline: it is not sent.
    version = report["trained"][0]["version"]
    (params,) = kfp_api.run_params()
    assert set(params) == {"data_source", "hyperparameters", "version"}
    assert params["data_source"]["dataset"] == "data/set0/data.csv"
    assert (params["hyperparameters"], params["version"]) == ({"C": 2.0}, version)


def test_an_upload_racing_another_worker_reuses_what_it_uploaded(
    tmp_path: Path, kfp_api: FakeKFP, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from modelworks.pipelines.kfp_compile import compile_folder

    monkeypatch.setenv("MW_TEST_KFP_TOKEN", TOKEN)
    ws = kfp_workspace(tmp_path, kfp_api.url, models=1)
    ir = yaml.safe_load(compile_folder(ws.pipelines_dir / "tiny", "tiny", "v1"))
    _, made = kfp_api.upload({"name": "tiny"}, ir, None)  # "another worker" was first
    kfp_api.upload({"pipelineid": made["pipeline_id"]}, ir, "v1")
    kfp_api.stale = {"pipeline", "version"}  # both lookups miss; both uploads get 409
    report = mw_json(capsys, ws, "apply")
    assert [t["name"] for t in report["trained"]] == ["model-0"]
    assert len(kfp_api.pipelines) == 1
    assert len(kfp_api.versions) == 2  # "tiny" and "v1": nothing uploaded twice
    assert kfp_api.problems == []
    assert [p.split(":")[1].strip()[:3] for p in kfp_api.conflicts] == ["409", "409"]


def test_a_failed_run_fails_the_job_with_the_servers_message(
    tmp_path: Path, kfp_api: FakeKFP, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MW_TEST_KFP_TOKEN", TOKEN)
    kfp_api.fail_with = "train: OOMKilled (exit code 137)"
    ws = kfp_workspace(tmp_path, kfp_api.url, models=1)
    code, out, _ = mw(capsys, ws, "apply", "--json")
    assert code != 0
    failed = json.loads(out)["failed"]
    assert [f["name"] for f in failed] == ["model-0"]
    assert "OOMKilled (exit code 137)" in failed[0]["error"]
    assert "failed" in failed[0]["error"]


def test_a_run_past_the_timeout_is_terminated_and_fails_the_job(
    tmp_path: Path, kfp_api: FakeKFP, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MW_TEST_KFP_TOKEN", TOKEN)
    kfp_api.polls_before_done = 10**6  # never finishes
    ws = kfp_workspace(tmp_path, kfp_api.url, models=1, timeout=1.5)
    code, out, _ = mw(capsys, ws, "apply", "--json")
    assert code != 0
    (failed,) = json.loads(out)["failed"]
    assert "after 1.5s (executor.timeout)" in failed["error"]
    assert [r["run"]["state"] for r in kfp_api.runs.values()] == ["CANCELING"]


def test_a_wrong_token_is_refused_by_the_server(
    tmp_path: Path, kfp_api: FakeKFP, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MW_TEST_KFP_TOKEN", "not-the-token")
    ws = kfp_workspace(tmp_path, kfp_api.url, models=1)
    code, out, _ = mw(capsys, ws, "apply", "--json")
    assert code != 0
    (failed,) = json.loads(out)["failed"]
    assert "HTTP 401" in failed["error"]
    assert "kfp.token_env" in failed["error"]
    assert "bad bearer token" in failed["error"]
    assert kfp_api.runs == {}


def test_an_unreachable_host_names_the_host_and_the_setting(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MW_TEST_KFP_TOKEN", TOKEN)
    ws = kfp_workspace(tmp_path, f"http://127.0.0.1:{port}", models=1, retries=1)
    code, out, _ = mw(capsys, ws, "apply", "--json")
    assert code != 0
    (failed,) = json.loads(out)["failed"]
    assert f"127.0.0.1:{port}" in failed["error"]
    assert "kfp.host" in failed["error"]
    assert "unreachable" in failed["error"]
    # An unreachable endpoint may come back: the job was tried again before failing.
    (log,) = (ws.state_dir / "logs" / "model-0").glob("*.log")
    assert log.read_text().count("is unreachable") == 2


def test_executor_kfp_without_a_host_is_a_settings_error(tmp_path: Path, capsys: Any) -> None:
    ws = make_workspace(tmp_path / "ws", executor={"kind": "kfp"})
    small_fleet(ws, models=1)
    code, _, err = mw(capsys, ws, "apply")
    assert code == 1
    assert "kfp.host is not set" in err
    assert "Traceback" not in err
