"""The shipped Helm chart (charts/modelcar), rendered like Helm: Go text/template + sprig.

tests/helm/render.go is Helm's engine in small (the sprig functions, include, required,
toYaml, fail, values coalesced over values.yaml), built with Debian's golang-go,
golang-github-masterminds-sprig-dev and golang-gopkg-yaml.v3-dev (scripts/test installs
them). What it renders is checked against KServe's InferenceService CRD schema and against
what `mw export kserve` writes for the same config.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_export import DIGEST, errors, unknown_fields

from modelworks.gitops.deploy import DeployConfig
from modelworks.gitops.export import (
    DEFAULT_CHART,
    SHIPPED_CHARTS,
    applicationset,
    inference_service,
    k8s_name,
    storage_uri,
)

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / DEFAULT_CHART
GOPATH = Path("/usr/share/gocode")
GO_PACKAGES = ("github.com/Masterminds/sprig", "gopkg.in/yaml.v3")
REGISTRY = "registry.example.com:5000"


@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = [p for p in GO_PACKAGES if not (GOPATH / "src" / p).is_dir()]
    if shutil.which("go") is None or missing:
        pytest.skip(
            "needs Go, sprig and yaml.v3 (apt-get install golang-go "
            "golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev)"
        )
    out = tmp_path_factory.mktemp("helm")
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH), "GOCACHE": str(out / "c")}
    subprocess.run(
        ["go", "build", "-o", str(out / "render"), str(ROOT / "tests/helm/render.go")],
        env=env,
        check=True,
        capture_output=True,
    )
    return out / "render"


def render(renderer: Path, values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    request = {"chart": str(CHART), "values": values, "release": "r", "namespace": "ns"}
    return subprocess.run(
        [str(renderer)], input=json.dumps(request), capture_output=True, text=True, check=False
    )


def docs(renderer: Path, values: dict[str, Any]) -> dict[str, Any]:
    """The rendered manifests by kind."""
    proc = render(renderer, values)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = {}
    for text in json.loads(proc.stdout).values():
        for doc in yaml.safe_load_all(text):
            if doc:
                out[doc["kind"]] = doc
    return out


def config(name: str = "team-a/churn", **extra: Any) -> DeployConfig:
    fields: dict[str, Any] = {
        "name": name,
        "image_repository": REGISTRY,
        "image_namespace": "modelworks",
        "version": "f7844fe3d7",
        "runtime": "sklearn",
        "artifact_digest": DIGEST,
        "artifact_uri": f"oci://{REGISTRY}/modelworks/{name}:f7844fe3d7",
        "fingerprint": "f7844fe3d7" + "0" * 54,
        "tenant": "team-a",
    }
    return DeployConfig(**{**fields, **extra})


def valid_isvc(doc: dict[str, Any]) -> dict[str, Any]:
    assert errors(doc, "kserve-inferenceservice-v1beta1") == []
    from test_export import schema

    assert unknown_fields(doc, schema("kserve-inferenceservice-v1beta1")) == []
    return doc


def test_a_modelworks_config_renders_what_mw_export_kserve_writes(renderer: Path) -> None:
    cfg = config()
    values = {**cfg.model_dump(), "env": "test", "pinDigest": False}
    isvc = valid_isvc(docs(renderer, values)["InferenceService"])
    expected = inference_service(cfg, "test", registry=REGISTRY)
    assert isvc["metadata"]["name"] == expected["metadata"]["name"] == "team-a-churn"
    assert isvc["spec"] == expected["spec"]
    for key in ("env", "model", "version", "tenant"):
        label = f"modelworks.dev/{key}"
        assert isvc["metadata"]["labels"][label] == expected["metadata"]["labels"][label]
    assert isvc["metadata"]["annotations"]["modelworks.dev/artifact-digest"] == DIGEST


def test_the_digest_pins_the_image_when_the_config_has_one(renderer: Path) -> None:
    isvc = valid_isvc(docs(renderer, config().model_dump())["InferenceService"])
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == f"oci://{REGISTRY}/modelworks/team-a/churn@{DIGEST}"
    assert model["modelFormat"] == {"name": "sklearn"}
    assert model["protocolVersion"] == "v2"


def test_a_reference_config_with_only_its_five_keys_renders(renderer: Path) -> None:
    values = {
        "chart_path": "charts/modelcar",
        "name": "churn-predictor",
        "image_repository": "quay.io",
        "image_namespace": "acme",
        "version": "f7844fe3d7",
    }
    isvc = valid_isvc(docs(renderer, values)["InferenceService"])
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == (
        "oci://quay.io/acme/churn-predictor:f7844fe3d7"
    )
    assert isvc["metadata"]["labels"]["modelworks.dev/tenant"] == "default"
    assert "modelworks.dev/artifact-digest" not in isvc["metadata"]["annotations"]


def test_an_image_repository_that_names_the_whole_repository_is_not_doubled(
    renderer: Path,
) -> None:
    cfg = config("iris", image_repository=f"{REGISTRY}/modelworks/iris", artifact_digest="")
    isvc = docs(renderer, cfg.model_dump())["InferenceService"]
    uri = isvc["spec"]["predictor"]["model"]["storageUri"]
    assert uri == f"oci://{REGISTRY}/modelworks/iris:f7844fe3d7"
    assert uri == storage_uri(cfg, REGISTRY, "modelworks")


@pytest.mark.parametrize(
    "name", ["iris", "Team_A/Churn.Model", "7-days", "x" * 70, "a" * 60 + "/" + "b" * 10]
)
def test_names_follow_k8s_name(renderer: Path, name: str) -> None:
    isvc = docs(renderer, config(name).model_dump())["InferenceService"]
    assert isvc["metadata"]["name"] == k8s_name(name)
    assert len(isvc["metadata"]["name"]) <= 63


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": ""}, "values: name (the model name) is required"),
        ({"name": "///"}, 'values: name "///" has no letters or digits'),
        ({"version": ""}, "values: version (the model version, the image tag) is required"),
        ({"image_repository": ""}, "values: image_repository (the OCI registry) is required"),
        ({"artifact_digest": "sha256:zz"}, 'values: artifact_digest "sha256:zz" is not sha256'),
        ({"runtime": "caffe"}, 'values: runtime "caffe" has no KServe model format'),
        ({"servingRuntime": {"enabled": True}}, "servingRuntime.image is required"),
    ],
)
def test_bad_values_fail_the_render_with_a_clear_message(
    renderer: Path, change: dict[str, Any], message: str
) -> None:
    proc = render(renderer, {**config().model_dump(), **change})
    assert proc.returncode != 0
    assert message in proc.stderr


def test_a_runtime_of_its_own_renders_a_serving_runtime(renderer: Path) -> None:
    image = "ghcr.io/acme/torch-server:1.2"
    values = {
        **config(runtime="pytorch").model_dump(),
        "servingRuntime": {"enabled": True, "image": image, "args": ["--model-dir=/mnt/models"]},
    }
    out = docs(renderer, values)
    isvc = valid_isvc(out["InferenceService"])
    runtime = out["ServingRuntime"]
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert isvc["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    assert runtime["metadata"]["name"] == "team-a-churn-runtime"
    assert runtime["spec"]["supportedModelFormats"] == [{"name": "pytorch", "autoSelect": False}]
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    [container] = runtime["spec"]["containers"]
    assert (container["image"], container["args"]) == (image, ["--model-dir=/mnt/models"])


def test_no_serving_runtime_by_default(renderer: Path) -> None:
    assert set(docs(renderer, config().model_dump())) == {"InferenceService"}


def test_every_argocd_parameter_sets_a_chart_value() -> None:
    params = applicationset("test", repo_url="https://x/y.git")["spec"]["template"]["spec"]
    names = {p["name"] for p in params["source"]["helm"]["parameters"]}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert names <= set(values), names - set(values)
    assert set(DeployConfig.model_fields) <= set(values)
    assert params["source"]["path"] == "{{ .chart_path }}"
    assert values["chart_path"] == DEFAULT_CHART


def test_the_chart_ships_as_package_data() -> None:
    assert CHART.resolve() == (SHIPPED_CHARTS / "modelcar").resolve()
    assert (SHIPPED_CHARTS / "modelcar/Chart.yaml").is_file()
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["name"] == "modelcar"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "charts/**/*" in project["tool"]["setuptools"]["package-data"]["modelworks"]
