"""`mw serve`: real git deploy repo, real OCI store, real sklearn/onnx models, the real ASGI app."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import numpy as np
import pytest
import yaml
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from modelworks import _git
from modelworks.artifacts.oci import OCIStore
from modelworks.artifacts.sign import generate_keypair, sign_dir
from modelworks.errors import ConfigError, VerificationError
from modelworks.gitops.deploy import DeployConfig, deploy
from modelworks.serving import create_app, parse_size
from modelworks.serving.runtimes import load_model
from modelworks.testing import AppClient
from modelworks.workspace import Settings, Workspace

ENV = "test"
OIP = Path(__file__).parent / "schemas" / "oip-rest-predict-v2.yaml"
X, Y = load_iris(return_X_y=True)


# -- fixture workspace ------------------------------------------------------------------------


def _schema(name: str) -> dict[str, Any]:
    spec = yaml.safe_load(OIP.read_text())
    return {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}


def assert_schema(doc: Any, name: str) -> None:
    jsonschema.Draft7Validator(_schema(name)).validate(doc)


def train(c: float = 1.0) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=1000).fit(X, Y)


def write_model_dir(out: Path, name: str, version: str, runtime: str, model: Any) -> Path:
    out.mkdir(parents=True)
    if runtime == "sklearn":
        import skops.io as sio

        sio.dump(model, out / "model.skops")
        model_file, dtype = "model.skops", "FP64"
    elif runtime == "onnx":
        from skl2onnx import to_onnx

        onx = to_onnx(model, X[:1].astype(np.float32), target_opset={"": 17, "ai.onnx.ml": 3})
        (out / "model.onnx").write_bytes(onx.SerializeToString())
        model_file, dtype = "model.onnx", "FP32"
    else:  # a runtime this server does not have installed
        (out / "model.json").write_text("{}")
        model_file, dtype = "model.json", "FP32"
    meta = {
        "name": name,
        "version": version,
        "runtime": runtime,
        "model_file": model_file,
        "inputs": [{"name": "input-0", "datatype": dtype, "shape": [-1, 4]}],
        "outputs": [{"name": "output-0", "datatype": "INT64", "shape": [-1]}],
        "feature_names": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
        "task": "classification",
    }
    (out / "metadata.json").write_text(json.dumps(meta))
    (out / "metrics.json").write_text(json.dumps({"accuracy": 0.97}))
    (out / "profile.json").write_text(json.dumps({"features": {}}))
    return out


def publish(ws: Workspace, name: str, version: str, runtime: str, model: Any) -> DeployConfig:
    """Package a model folder as a ModelCar in the workspace store; return its deploy config."""
    work = ws.root.parent / "build" / f"{name.replace('/', '_')}-{version}"
    write_model_dir(work, name, version, runtime, model)
    sign_dir(work, ws.path(ws.settings.signing.private_key))  # the server refuses unsigned models
    repo = f"modelworks/{name}"
    ref = OCIStore(ws.oci_dir).write_image(repo, version, work, {"dev.modelworks.version": version})
    tenant, _, bare = name.rpartition("/")
    return DeployConfig(
        name=bare,
        image_repository=repo,
        image_namespace="modelworks",
        version=version,
        runtime=runtime,
        artifact_digest=ref.digest,
        artifact_uri=f"oci://{repo}@{ref.digest}",
        tenant=tenant or "default",
    )


class Fleet:
    """A workspace copy with the models deployed to `test` and prepared next versions."""

    def __init__(self, ws: Workspace, models: dict[str, Any], configs: dict[str, DeployConfig]):
        self.ws, self.models, self.configs = ws, models, configs

    def deploy(self, *cfgs: DeployConfig) -> str | None:
        return deploy(self.ws.deploy_repo, ENV, list(cfgs), "deploy")

    def undeploy(self, name: str) -> None:
        tenant, _, bare = name.rpartition("/")
        for path in (self.ws.root / "deploy" / ENV).glob("**/config.yaml"):
            cfg = yaml.safe_load(path.read_text())
            if (cfg["tenant"], cfg["name"]) == (tenant or "default", bare):
                path.unlink()
                rel = str(path.relative_to(self.ws.root))
                _git.commit(self.ws.root, [rel], f"remove {name}")

    def layer_blob(self, digest: str) -> Path:
        store = OCIStore(self.ws.oci_dir)
        layer = store.manifest(digest)["layers"][-1]["digest"]
        return store.blob_path(layer)


@pytest.fixture(scope="session")
def fleet_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("deployed") / "ws"
    _git.init(root)
    (root / ".gitignore").write_text(".mw/\n")
    _git.commit(root, [".gitignore"], "init")
    ws = Workspace(root, Settings())
    generate_keypair(
        ws.path(ws.settings.signing.private_key), ws.path(ws.settings.signing.public_key)
    )
    models = {
        "iris@1": train(1.0),
        "iris@2": train(0.01),
        "onnx@1": train(1.0),
        "churn@1": train(0.1),
    }
    cfgs = {
        "iris@1": publish(ws, "iris", "1", "sklearn", models["iris@1"]),
        "iris@2": publish(ws, "iris", "2", "sklearn", models["iris@2"]),
        "onnx@1": publish(ws, "iris-onnx", "1", "onnx", models["onnx@1"]),
        "churn@1": publish(ws, "acme/churn", "1", "sklearn", models["churn@1"]),
        "xgb@1": publish(ws, "boosted", "1", "xgboost", None),
    }
    deploy(root, ENV, [cfgs["iris@1"], cfgs["onnx@1"], cfgs["churn@1"]], "deploy v1")
    return root, {"models": models, "configs": cfgs}


@pytest.fixture
def deployed(fleet_template: tuple[Path, dict[str, Any]], tmp_path: Path) -> Fleet:
    src, data = fleet_template
    root = tmp_path / "ws"
    shutil.copytree(src, root, symlinks=True)
    return Fleet(Workspace(root, Settings()), data["models"], data["configs"])


@pytest.fixture
def client(deployed: Fleet) -> Any:
    app = create_app(deployed.ws, ENV, reconcile_in_background=False, sample_rate=0.0)
    with AppClient(app) as c:
        yield c


def infer_body(rows: np.ndarray, dtype: str = "FP64", **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(rows.shape),
                "datatype": dtype,
                "data": rows.ravel().tolist(),
            }
        ],
        **extra,
    }


def infer(client: AppClient, name: str, rows: np.ndarray, **extra: Any) -> Any:
    return client.post(f"/v2/models/{name}/infer", json=infer_body(rows, **extra))


# -- parse_size -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MiB", 512 * 2**20),
        ("1GiB", 2**30),
        ("300MB", 300 * 10**6),
        ("4096", 4096),
        ("1.5 KiB", 1536),
        ("2g", 2 * 10**9),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "1 parsec", "-3MB", "MB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="cannot read size"):
        parse_size(text)


# -- protocol endpoints -----------------------------------------------------------------------


def test_health_and_server_metadata(client: AppClient) -> None:
    assert client.get("/v2/health/live").status_code == 200
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200
    assert ready.json()["models"] == 3
    meta = client.get("/v2").json()
    assert_schema(meta, "metadata_server_response")
    assert meta["name"] == "modelworks"
    listing = client.get("/v2/models").json()
    assert [m["name"] for m in listing["models"]] == ["acme/churn", "iris", "iris-onnx"]


@pytest.mark.parametrize(
    ("name", "platform"),
    [("iris", "sklearn"), ("iris-onnx", "onnxruntime_onnx"), ("acme/churn", "sklearn")],
)
def test_model_metadata_and_ready(client: AppClient, name: str, platform: str) -> None:
    meta = client.get(f"/v2/models/{name}")
    assert meta.status_code == 200
    body = meta.json()
    assert_schema(body, "metadata_model_response")
    assert body["name"] == name
    assert body["versions"] == ["1"]
    assert body["platform"] == platform
    assert body["inputs"][0]["shape"] == [-1, 4]
    ready = client.get(f"/v2/models/{name}/ready")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert client.get(f"/v2/models/{name}/versions/1/ready").status_code == 200
    assert client.get(f"/v2/models/{name}/versions/1").json() == body
    _err(client.get(f"/v2/models/{name}/versions/7"), 404, "has no version '7'")


@pytest.mark.parametrize(
    ("name", "key", "dtype"),
    [
        ("iris", "iris@1", "FP64"),
        ("iris-onnx", "onnx@1", "FP32"),
        ("acme/churn", "churn@1", "FP64"),
    ],
)
def test_infer_matches_the_model(
    client: AppClient, deployed: Fleet, name: str, key: str, dtype: str
) -> None:
    rows = X[::7]
    resp = client.post(f"/v2/models/{name}/infer", json=infer_body(rows, dtype, id="req-42"))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert_schema(body, "inference_response")
    assert body["id"] == "req-42"
    assert body["model_name"] == name
    assert body["model_version"] == "1"
    out = body["outputs"][0]
    assert out["name"] == "output-0"
    assert out["shape"] == [len(rows)]
    expected = deployed.models[key].predict(rows.astype(np.float32 if dtype == "FP32" else float))
    assert out["data"] == expected.tolist()


def test_infer_nested_data_and_version_route(client: AppClient, deployed: Fleet) -> None:
    rows = X[:3]
    body = {
        "inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP64", "data": rows.tolist()}],
        "outputs": [{"name": "output-0"}],
    }
    resp = client.post("/v2/models/iris/versions/1/infer", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"][0]["data"] == deployed.models["iris@1"].predict(rows).tolist()
    # An integer tensor is cast to the model's FP64 input.
    ints = {
        "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "INT32", "data": [5, 3, 1, 0]}]
    }
    assert client.post("/v2/models/iris/infer", json=ints).status_code == 200


# -- errors -----------------------------------------------------------------------------------


def _err(resp: Any, status: int, match: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert_schema(body, "inference_error_response")
    assert set(body) == {"error"}
    assert match in body["error"], body["error"]
    return str(body["error"])


def test_unknown_model_suggests(client: AppClient) -> None:
    _err(infer(client, "irsi", X[:1]), 404, "Did you mean 'iris'?")
    _err(client.get("/v2/models/acme/chrun"), 404, "Did you mean 'acme/churn'?")
    _err(client.get("/v2/models/nothing-like-it/ready"), 404, "not deployed in test")


def test_bad_requests_say_what_is_wrong(client: AppClient) -> None:
    rows = X[:2, :3]
    _err(infer(client, "iris", rows), 400, "input-0 has shape [2, 3], model expects [-1, 4]")
    bytes_body = {
        "inputs": [
            {"name": "input-0", "shape": [1, 4], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}
        ]
    }
    _err(
        client.post("/v2/models/iris/infer", json=bytes_body),
        400,
        "input-0 has datatype BYTES, model expects FP64",
    )
    _err(client.post("/v2/models/iris/infer", content=b"{not json"), 400, "not valid JSON")
    _err(client.post("/v2/models/iris/infer", json={"inputs": []}), 400, "non-empty list")
    wrong_name = infer_body(X[:1])
    wrong_name["inputs"][0]["name"] = "input0"
    _err(client.post("/v2/models/iris/infer", json=wrong_name), 400, "Did you mean 'input-0'?")
    short = infer_body(X[:2])
    short["inputs"][0]["data"] = short["inputs"][0]["data"][:-1]
    _err(client.post("/v2/models/iris/infer", json=short), 400, "has 7 values, shape [2, 4]")
    floaty = {
        "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FLOAT", "data": [1, 2, 3, 4]}]
    }
    _err(client.post("/v2/models/iris/infer", json=floaty), 400, "unknown datatype 'FLOAT'")
    _err(
        client.post("/v2/models/iris/versions/9/infer", json=infer_body(X[:1])),
        404,
        "has no version '9'",
    )
    _err(client.get("/v3/whatever"), 404, "Not Found")


def test_missing_runtime_is_a_clear_error(client: AppClient, deployed: Fleet) -> None:
    deployed.deploy(deployed.configs["xgb@1"])
    assert client.post("/admin/reconcile").json()["added"] == ["boosted"]
    msg = _err(infer(client, "boosted", X[:1]), 503, "runtime xgboost is not installed")
    assert "pip install xgboost" in msg
    ready = client.get("/v2/models/boosted/ready")
    assert ready.status_code == 503
    assert "xgboost is not installed" in ready.json()["error"]
    health = client.get("/v2/health/ready")
    assert health.status_code == 503
    assert health.json()["failed"] == ["boosted"]
    assert infer(client, "iris", X[:1]).status_code == 200  # the rest keep serving


# -- reconcile, swaps, failures ---------------------------------------------------------------


def test_reconcile_swaps_version_and_unloads_removed(client: AppClient, deployed: Fleet) -> None:
    assert infer(client, "iris", X[:1]).json()["model_version"] == "1"
    assert infer(client, "acme/churn", X[:1]).status_code == 200
    deployed.deploy(deployed.configs["iris@2"])
    deployed.undeploy("acme/churn")
    result = client.post("/admin/reconcile").json()
    assert result["changed"] == [{"name": "iris", "from": "1", "to": "2"}]
    assert result["removed"] == ["acme/churn"]
    assert result["loaded"] == ["iris"]
    server = client.app.state.server  # type: ignore[attr-defined]
    assert set(server.cache.digests()) == {deployed.configs["iris@2"].artifact_digest}
    rows = X[40:60]
    body = infer(client, "iris", rows).json()
    assert body["model_version"] == "2"
    assert body["outputs"][0]["data"] == deployed.models["iris@2"].predict(rows).tolist()
    _err(infer(client, "acme/churn", X[:1]), 404, "not deployed")
    assert client.get("/v2/models/iris").json()["versions"] == ["2"]
    again = client.post("/admin/reconcile").json()
    assert again["changed"] == []
    assert again["unchanged"] == 2


def test_tampered_new_version_is_refused_old_keeps_serving(
    client: AppClient, deployed: Fleet
) -> None:
    assert infer(client, "iris", X[:1]).json()["model_version"] == "1"
    new = deployed.configs["iris@2"]
    blob = deployed.layer_blob(new.artifact_digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    deployed.deploy(new)
    result = client.post("/admin/reconcile").json()
    assert "corrupt" in result["failed"]["iris"]
    for _ in range(3):
        body = infer(client, "iris", X[:5]).json()
        assert body["model_version"] == "1"
        assert body["outputs"][0]["data"] == deployed.models["iris@1"].predict(X[:5]).tolist()
    ready = client.get("/v2/models/iris/ready")
    assert ready.status_code == 200
    status = ready.json()
    assert status["version"] == "1"
    assert status["desired_version"] == "2"
    assert "iris version 2" in status["error"]
    assert "corrupt" in status["error"]
    assert client.get("/v2/health/ready").status_code == 200


def test_lazy_new_version_after_restart_with_tampered_blob(deployed: Fleet) -> None:
    new = deployed.configs["iris@2"]
    blob = deployed.layer_blob(new.artifact_digest)
    blob.write_bytes(blob.read_bytes()[:-10])
    deployed.deploy(new)
    app = create_app(deployed.ws, ENV, reconcile_in_background=False, sample_rate=0.0)
    with AppClient(app) as c:
        _err(infer(c, "iris", X[:1]), 503, "iris version 2")
        assert c.get("/v2/models/iris/ready").status_code == 503
        assert infer(c, "iris-onnx", X[:1].astype(np.float32), dtype="FP32").status_code == 200


def test_corrupted_cache_entry_is_re_extracted_from_the_intact_store(deployed: Fleet) -> None:
    cfg = deployed.configs["iris@1"]
    entry = deployed.ws.state_dir / "serving-cache" / cfg.artifact_digest.split(":", 1)[1]
    app = create_app(deployed.ws, ENV, reconcile_in_background=False, sample_rate=0.0)
    with AppClient(app) as c:
        assert infer(c, "iris", X[:1]).status_code == 200
    model_file = next(p for p in entry.iterdir() if p.suffix == ".skops")
    intact = model_file.read_bytes()
    damaged = bytearray(intact)
    damaged[len(damaged) // 2] ^= 0xFF
    model_file.chmod(0o644)
    model_file.write_bytes(bytes(damaged))
    app = create_app(deployed.ws, ENV, reconcile_in_background=False, sample_rate=0.0)
    with AppClient(app) as c:  # a restart finds the damaged entry and extracts it again
        body = infer(c, "iris", X[:5]).json()
        assert body["model_version"] == "1"
        assert body["outputs"][0]["data"] == deployed.models["iris@1"].predict(X[:5]).tolist()
        assert c.get("/v2/models/iris/ready").status_code == 200
    assert model_file.read_bytes() == intact
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".tmp-")]


def test_lru_evicts_and_reloads(deployed: Fleet) -> None:
    app = create_app(deployed.ws, ENV, max_memory=1, reconcile_in_background=False, sample_rate=0.0)
    server = app.state.server
    with AppClient(app) as c:
        for name in ["iris", "acme/churn", "iris", "acme/churn"]:
            resp = infer(c, name, X[:2])
            assert resp.status_code == 200
            assert len(server.cache) == 1
            key = ("acme", "churn") if name == "acme/churn" else ("default", name)
            assert server.cache.digests() == [server.entries[key].desired.artifact_digest]
        assert server.cache.evictions == 3
        metrics = c.get("/metrics").text
    assert "mw_serving_evictions_total 3.0" in metrics
    assert 'mw_serving_model_load_seconds_count{runtime="sklearn"} 4.0' in metrics


def test_lru_keeps_recent_models_within_budget(deployed: Fleet) -> None:
    budget = 10 * 2**20
    app = create_app(
        deployed.ws, ENV, max_memory=budget, reconcile_in_background=False, sample_rate=0.0
    )
    server = app.state.server
    with AppClient(app) as c:
        for name in ["iris", "acme/churn"]:
            assert infer(c, name, X[:2]).status_code == 200
        assert len(server.cache) == 2
        assert server.cache.used <= budget
        assert server.cache.evictions == 0


def test_metrics(client: AppClient) -> None:
    infer(client, "iris", X[:1])
    infer(client, "iris", X[:1, :2])
    infer(client, "nope", X[:1])
    text = client.get("/metrics").text
    assert 'mw_serving_requests_total{model="iris",tenant="default"} 2.0' in text
    assert 'mw_serving_request_errors_total{model="iris",status="400",tenant="default"} 1.0' in text
    assert 'mw_serving_request_errors_total{model="",status="404",tenant=""} 1.0' in text
    assert 'mw_serving_request_duration_seconds_count{model="iris",tenant="default"} 1.0' in text
    assert "mw_serving_loaded_models 1.0" in text


def test_bad_ref_and_env_are_clear(deployed: Fleet) -> None:
    from modelworks.errors import GitError, ServingError

    with pytest.raises(GitError, match="ref 'nope' does not name a commit"):
        create_app(deployed.ws, ENV, ref="nope")
    with pytest.raises(ServingError, match=r"environment 'staging' is not in modelworks\.yaml"):
        create_app(deployed.ws, "staging")
    elsewhere = Workspace(deployed.ws.root.parent / "plain", Settings())
    elsewhere.root.mkdir()
    with pytest.raises(GitError, match="is not a git repository"):
        create_app(elsewhere, ENV)


def test_sampled_predictions_are_logged(deployed: Fleet) -> None:
    from modelworks.monitor.predlog import read_log

    app = create_app(deployed.ws, ENV, reconcile_in_background=False, sample_rate=1.0)
    with AppClient(app) as c:
        for rows in (X[:3], X[10:12]):
            assert infer(c, "acme/churn", rows).status_code == 200
        assert infer(c, "iris", X[:1, :2]).status_code == 400  # failed requests are not logged
    logged, names, info = read_log(deployed.ws.state_dir / "predictions" / ENV, "acme/churn")
    assert np.allclose(logged, np.vstack([X[:3], X[10:12]]))
    assert names == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert info["rows"] == 5
    assert info["versions"] == ["1"]
    assert not (deployed.ws.state_dir / "predictions" / ENV / "iris").exists()


def test_sample_rate_zero_logs_nothing(client: AppClient, deployed: Fleet) -> None:
    assert infer(client, "iris", X[:3]).status_code == 200
    assert client.app.state.sampler is None
    assert not (deployed.ws.state_dir / "predictions").exists()


# -- runtimes ---------------------------------------------------------------------------------


def _double(x: Any) -> Any:
    return x * 2


def test_skops_untrusted_types_are_refused(tmp_path: Path) -> None:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    model = make_pipeline(FunctionTransformer(_double), LogisticRegression(max_iter=2000)).fit(X, Y)
    folder = write_model_dir(tmp_path / "m", "evil", "1", "sklearn", model)
    with pytest.raises(VerificationError, match="outside the sklearn/numpy allowlist"):
        load_model(folder, name="evil", version="1", digest="sha256:" + "0" * 64, runtime="sklearn")


def test_joblib_needs_explicit_trust(tmp_path: Path) -> None:
    import joblib

    folder = write_model_dir(tmp_path / "m", "j", "1", "sklearn", train())
    joblib.dump(train(), folder / "model.joblib")
    meta = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**meta, "model_file": "model.joblib"}))
    kwargs: dict[str, Any] = {
        "name": "j",
        "version": "1",
        "digest": "sha256:" + "0" * 64,
        "runtime": "sklearn",
    }
    with pytest.raises(VerificationError, match="loads pickles only when"):
        load_model(folder, **kwargs)
    model = load_model(folder, allow_pickle=True, **kwargs)
    assert model.predict(X[:3]).tolist() == train().predict(X[:3]).tolist()


# -- signatures -------------------------------------------------------------------------------


def test_signed_models_verify_and_a_wrong_key_is_refused(deployed: Fleet, tmp_path: Path) -> None:
    from modelworks.artifacts.sign import generate_keypair, sign_dir

    keys = tmp_path / "keys"
    generate_keypair(keys / "a.pem", keys / "a.pub.pem")
    generate_keypair(keys / "b.pem", keys / "b.pub.pem")
    public = deployed.ws.path(deployed.ws.settings.signing.public_key)
    public.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(keys / "a.pub.pem", public)
    cfgs = []
    for key, version in (("a", "5"), ("b", "6")):
        folder = write_model_dir(tmp_path / f"signed-{key}", "iris", version, "sklearn", train())
        sign_dir(folder, keys / f"{key}.pem")
        ref = OCIStore(deployed.ws.oci_dir).write_image("modelworks/iris", version, folder, {})
        cfgs.append(
            deployed.configs["iris@1"].model_copy(
                update={"version": version, "artifact_digest": ref.digest}
            )
        )
    deployed.deploy(cfgs[0])
    app = create_app(deployed.ws, ENV, reconcile_in_background=False, sample_rate=0.0)
    with AppClient(app) as c:
        assert infer(c, "iris", X[:1]).json()["model_version"] == "5"
        deployed.deploy(cfgs[1])
        result = c.post("/admin/reconcile").json()
        assert "signed with another key" in result["failed"]["iris"]
        assert infer(c, "iris", X[:1]).json()["model_version"] == "5"


# -- a real server under load while a version swaps --------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.integration
def test_uvicorn_swap_under_load_fails_no_request(deployed: Fleet) -> None:
    import uvicorn

    app = create_app(deployed.ws, ENV, poll_interval=0.2, sample_rate=0.0)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    runner = threading.Thread(target=server.run, daemon=True)
    runner.start()
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: httpx.get(f"{base}/v2/health/live").status_code == 200)
        stop = threading.Event()
        seen: list[str] = []
        failures: list[str] = []
        body = infer_body(X[:4])

        def fire() -> None:
            with httpx.Client(base_url=base, timeout=10) as http:
                while not stop.is_set():
                    r = http.post("/v2/models/iris/infer", json=body)
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text}")
                    else:
                        seen.append(r.json()["model_version"])

        threads = [threading.Thread(target=fire) for _ in range(4)]
        for t in threads:
            t.start()
        _wait_until(lambda: len(seen) > 50)
        deployed.deploy(deployed.configs["iris@2"])
        _wait_until(lambda: seen[-1] == "2" and seen.count("2") > 50, timeout=20)
        stop.set()
        for t in threads:
            t.join()
    finally:
        server.should_exit = True
        runner.join(timeout=10)
    assert failures == []
    assert seen[0] == "1"
    assert seen[-20:] == ["2"] * 20


@pytest.mark.integration
@pytest.mark.slow
def test_run_server_stops_gracefully_on_sigterm(deployed: Fleet) -> None:
    import signal
    import subprocess
    import sys

    port = _free_port()
    (deployed.ws.root / "modelworks.yaml").write_text("serving:\n  sample_rate: 1.0\n")
    code = (
        "from modelworks.serving import run_server; from modelworks.workspace import Workspace; "
        f"run_server(Workspace.load({str(deployed.ws.root)!r}), 'test', port={port})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_until(lambda: httpx.get(f"{base}/v2/health/ready").status_code == 200, timeout=30)
        resp = httpx.post(f"{base}/v2/models/acme/churn/infer", json=infer_body(X[:2]))
        assert resp.status_code == 200
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "serving 3 model(s) of test" in err
    from modelworks.monitor.predlog import read_log

    logged, _, _ = read_log(deployed.ws.state_dir / "predictions" / ENV, "acme/churn")
    assert np.allclose(logged, X[:2])  # the sampled rows were flushed on shutdown


def _wait_until(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_missing_public_key_refuses_to_load_unverified(deployed: Fleet) -> None:
    deployed.ws.path(deployed.ws.settings.signing.public_key).unlink()
    app = create_app(deployed.ws, ENV, reconcile_in_background=False, sample_rate=0.0)
    with AppClient(app) as c:
        resp = infer(c, "iris", X[:1])
        assert resp.status_code >= 400
        assert "public key" in resp.json()["error"]
        assert "missing" in resp.json()["error"]
        ready = c.get("/v2/models/iris/ready").json()
        assert ready["ready"] is False
        assert "public key" in ready["error"]
