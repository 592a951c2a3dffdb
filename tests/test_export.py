"""`mw export`: ApplicationSets and InferenceServices from a real deploy repo, checked
against the real CRD schemas (tests/schemas) and field by field."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from modelworks import _git
from modelworks.errors import DeployError
from modelworks.gitops.deploy import DeployConfig, deploy
from modelworks.gitops.export import (
    applicationset,
    export_argocd,
    export_kserve,
    k8s_name,
    label_value,
)

SCHEMAS = Path(__file__).parent / "schemas"
REPO_URL = "https://github.com/acme/deploy.git"
DIGEST = "sha256:" + "ab" * 32
DNS1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


def schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def errors(doc: dict[str, Any], name: str) -> list[str]:
    validator = jsonschema.Draft7Validator(schema(name))
    return [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(doc)]


def unknown_fields(doc: Any, sch: dict[str, Any], path: str = "") -> list[str]:
    """Keys the CRD does not declare: the API server would prune them silently."""
    if isinstance(doc, dict) and "properties" in sch:
        found = []
        for key, value in doc.items():
            if key in sch["properties"]:
                found += unknown_fields(value, sch["properties"][key], f"{path}.{key}")
            elif "additionalProperties" not in sch:
                found.append(f"{path}.{key}")
        return found
    if isinstance(doc, list) and "items" in sch:
        return [u for item in doc for u in unknown_fields(item, sch["items"], f"{path}[]")]
    return []


def config(
    name: str, runtime: str, *, tenant: str = "default", uri: str | None = None
) -> DeployConfig:
    return DeployConfig(
        name=name,
        image_repository="quay.io",
        image_namespace="acme",
        version="f7844fe3d7",
        runtime=runtime,
        artifact_digest=DIGEST,
        fingerprint="f7844fe3d7" + "0" * 54,
        artifact_uri=uri or f"oci-layout://.mw/oci:{name}",
        tenant=tenant,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "deploy-repo"
    _git.init(root)
    models = [
        config("iris", "sklearn"),
        config("digits", "onnx"),
        config("team-a/churn", "sklearn", tenant="team-a"),
    ]
    assert deploy(root, "test", models, "deploy three models to test")
    return root


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def test_argocd_appset_per_env_is_valid_and_complete(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "argocd"
    paths = export_argocd(
        repo,
        out,
        repo_url=REPO_URL,
        envs=["test", "prod"],
        revision="main",
        auto_sync={"test": True, "prod": False},
    )
    assert [p.name for p in paths] == ["appset-test.yaml", "appset-prod.yaml"]
    for path in paths:
        doc = load(path)
        assert errors(doc, "argocd-applicationset-v1alpha1") == []
        assert unknown_fields(doc, schema("argocd-applicationset-v1alpha1")) == []

    test = load(out / "appset-test.yaml")
    assert test["apiVersion"] == "argoproj.io/v1alpha1"
    assert test["kind"] == "ApplicationSet"
    assert test["metadata"] == {
        "name": "modelworks-test",
        "namespace": "argocd",
        "labels": {"app.kubernetes.io/managed-by": "modelworks", "modelworks.dev/env": "test"},
    }
    spec = test["spec"]
    assert spec["goTemplate"] is True
    assert spec["goTemplateOptions"] == ["missingkey=error"]
    assert spec["generators"] == [
        {
            "git": {
                "repoURL": REPO_URL,
                "revision": "main",
                "files": [{"path": "deploy/test/**/config.yaml"}],
            }
        }
    ]
    app = spec["template"]
    assert app["metadata"]["name"].endswith('(lower .name) "-" | trimAll "-" }}-test')
    source = app["spec"]["source"]
    assert source["repoURL"] == REPO_URL
    assert source["targetRevision"] == "main"
    assert source["path"] == "{{ .chart_path }}"
    params = {p["name"]: p["value"] for p in source["helm"]["parameters"]}
    assert params["image_repository"] == "{{ .image_repository }}"
    assert params["version"] == "{{ .version }}"
    assert params["artifact_uri"] == '{{ get . "artifact_uri" }}'
    assert params["artifact_digest"] == '{{ get . "artifact_digest" }}'
    assert params["env"] == "test"
    assert all(p["forceString"] for p in source["helm"]["parameters"])
    assert app["spec"]["destination"] == {
        "server": "https://kubernetes.default.svc",
        "namespace": "modelworks-test",
    }
    assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}

    prod = load(out / "appset-prod.yaml")
    assert prod["spec"]["generators"][0]["git"]["files"] == [{"path": "deploy/prod/**/config.yaml"}]
    assert "automated" not in prod["spec"]["template"]["spec"]["syncPolicy"]
    assert prod["spec"]["template"]["spec"]["destination"]["namespace"] == "modelworks-prod"


def test_argocd_every_go_template_names_a_config_key(repo: Path, tmp_path: Path) -> None:
    # missingkey=error: a template field the config files lack would break every Application.
    doc = load(export_argocd(repo, tmp_path, repo_url=REPO_URL, envs=["test"])[0])
    text = yaml.safe_dump(doc["spec"]["template"])
    actions = re.findall(r"\{\{(.*?)\}\}", text)
    used = {field for action in actions for field in re.findall(r"\.([a-z_]+)", action)}
    committed = yaml.safe_load((repo / "deploy/test/team-a/churn/config.yaml").read_text())
    assert "chart_path" in used
    assert used <= set(committed), used - set(committed)


def test_argocd_chart_override_and_manual_default(repo: Path, tmp_path: Path) -> None:
    [path] = export_argocd(
        repo,
        tmp_path,
        repo_url=REPO_URL,
        envs=["test"],
        chart_path="charts/kserve-model",
        project="ml",
    )
    doc = load(path)
    assert doc["spec"]["template"]["spec"]["source"]["path"] == "charts/kserve-model"
    assert doc["spec"]["template"]["spec"]["project"] == "ml"
    assert "automated" not in doc["spec"]["template"]["spec"]["syncPolicy"]


def test_argocd_output_is_deterministic(repo: Path, tmp_path: Path) -> None:
    a = export_argocd(repo, tmp_path / "a", repo_url=REPO_URL, envs=["test"])[0].read_bytes()
    b = export_argocd(repo, tmp_path / "b", repo_url=REPO_URL, envs=["test"])[0].read_bytes()
    assert a == b


def test_argocd_warns_about_a_missing_chart(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    warnings: list[str] = []
    export_argocd(repo, tmp_path, repo_url=REPO_URL, envs=["test"], chart_path="charts/other")
    assert "chart 'charts/other'" in capsys.readouterr().err
    export_argocd(repo, tmp_path, repo_url=REPO_URL, envs=["test"], warnings=warnings)
    # Without an override the shipped chart is committed where the configs point.
    assert [w for w in warnings if "committed the chart" in w], warnings
    assert _git.ls_files(repo, "HEAD", "charts/modelcar/Chart.yaml")
    assert not [w for w in warnings if "no Chart.yaml" in w]
    capsys.readouterr()
    export_argocd(repo, tmp_path, repo_url=REPO_URL, envs=["test"], warnings=(again := []))
    assert again == []
    assert "chart" not in capsys.readouterr().err


def test_argocd_rejects_bad_env_name(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="environment 'Prod_EU' cannot be used"):
        export_argocd(repo, tmp_path, repo_url=REPO_URL, envs=["Prod_EU"])


def test_kserve_inference_services(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "kserve"
    paths = export_kserve(repo, "test", out, registry="registry.acme.io:5000", namespace="models")
    assert sorted(p.name for p in paths) == ["digits.yaml", "iris.yaml", "team-a-churn.yaml"]
    docs = {p.stem: load(p) for p in paths}
    isvc_schema = schema("kserve-inferenceservice-v1beta1")
    for doc in docs.values():
        assert errors(doc, "kserve-inferenceservice-v1beta1") == []
        assert unknown_fields(doc, isvc_schema) == []
        assert doc["apiVersion"] == "serving.kserve.io/v1beta1"
        assert doc["kind"] == "InferenceService"
        assert doc["metadata"]["namespace"] == "modelworks-test"
        assert doc["metadata"]["annotations"]["modelworks.dev/artifact-digest"] == DIGEST
        assert doc["spec"]["predictor"]["model"]["protocolVersion"] == "v2"

    churn = docs["team-a-churn"]
    assert churn["metadata"]["name"] == "team-a-churn"
    assert churn["metadata"]["labels"]["modelworks.dev/tenant"] == "team-a"
    assert churn["metadata"]["labels"]["modelworks.dev/model"] == "team-a-churn"
    assert churn["metadata"]["labels"]["modelworks.dev/version"] == "f7844fe3d7"
    assert churn["metadata"]["annotations"]["modelworks.dev/model-name"] == "team-a/churn"
    model = churn["spec"]["predictor"]["model"]
    assert model["storageUri"] == "oci://registry.acme.io:5000/models/team-a/churn:f7844fe3d7"
    assert model["modelFormat"] == {"name": "sklearn"}
    assert docs["digits"]["spec"]["predictor"]["model"]["modelFormat"] == {"name": "onnx"}
    assert docs["iris"]["spec"]["predictor"]["model"]["storageUri"] == (
        "oci://registry.acme.io:5000/models/iris:f7844fe3d7"
    )


def test_kserve_namespace_defaults_to_config_image_namespace(repo: Path, tmp_path: Path) -> None:
    paths = export_kserve(
        repo, "test", tmp_path, registry="localhost:5000", target_namespace="serving"
    )
    iris = load(next(p for p in paths if p.name == "iris.yaml"))
    assert iris["spec"]["predictor"]["model"]["storageUri"] == (
        "oci://localhost:5000/acme/iris:f7844fe3d7"
    )
    assert iris["metadata"]["namespace"] == "serving"


def test_kserve_without_registry_is_a_clear_error(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(DeployError, match=r"KServe needs an OCI registry.*oci\.registry"):
        export_kserve(repo, "test", tmp_path / "out", registry=None)
    assert not (tmp_path / "out").exists()


def test_kserve_rejects_bad_registry_and_reference(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    _git.init(root)
    deploy(root, "test", [config("Iris", "sklearn")], "deploy")
    with pytest.raises(DeployError, match=r"must be host\[:port\], got 'https://r.io'"):
        export_kserve(root, "test", tmp_path / "out", registry="https://r.io")
    with pytest.raises(DeployError, match=r"OCI reference models/Iris:f7844fe3d7, which is not"):
        export_kserve(root, "test", tmp_path / "out", registry="r.io", namespace="models")


def test_kserve_uses_an_artifact_uri_that_names_a_registry(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    _git.init(root)
    pushed = "oci://localhost:5000/modelworks/iris@" + DIGEST
    deploy(root, "test", [config("iris", "xgboost", uri=pushed)], "deploy")
    [path] = export_kserve(root, "test", tmp_path / "out", registry=None)
    model = load(path)["spec"]["predictor"]["model"]
    assert model["storageUri"] == pushed
    assert model["modelFormat"] == {"name": "xgboost"}


def test_kserve_empty_env_writes_nothing(repo: Path, tmp_path: Path) -> None:
    assert export_kserve(repo, "prod", tmp_path / "out", registry="localhost:5000") == []
    assert not (tmp_path / "out").exists()


def test_kserve_unknown_runtime(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    _git.init(root)
    deploy(root, "test", [config("iris", "sklern")], "deploy")
    with pytest.raises(DeployError, match=r"runtime 'sklern'.*Did you mean 'sklearn'"):
        export_kserve(root, "test", tmp_path / "out", registry="localhost:5000")


def test_kserve_name_collision_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    _git.init(root)
    deploy(
        root, "test", [config("team-a/churn", "sklearn"), config("team-a-churn", "onnx")], "deploy"
    )
    with pytest.raises(DeployError, match="both map to the Kubernetes name 'team-a-churn'"):
        export_kserve(root, "test", tmp_path / "out", registry="localhost:5000")


def test_kserve_prunes_models_no_longer_deployed(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_kserve(repo, "test", out, registry="localhost:5000")
    (out / "kustomization.yaml").write_text("resources: []\n")  # not ours: kept
    _git.git(repo, "rm", "-q", "-r", "deploy/test/digits")
    _git.git(repo, "commit", "-q", "-m", "undeploy digits")
    paths = export_kserve(repo, "test", out, registry="localhost:5000")
    assert sorted(p.name for p in out.iterdir()) == [
        "iris.yaml",
        "kustomization.yaml",
        "team-a-churn.yaml",
    ]
    assert len(paths) == 2
    # reading an older commit still gives the three models
    assert len(export_kserve(repo, "test", tmp_path / "old", registry="x.io", ref="HEAD~1")) == 3


def test_kserve_unknown_ref_is_a_clear_error(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="revision 'nope' does not exist"):
        export_kserve(repo, "test", tmp_path, registry="localhost:5000", ref="nope")


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("iris", "iris"),
        ("team-a/churn", "team-a-churn"),
        ("Churn_Model.v2", "churn-model-v2"),
        ("9lives", "m-9lives"),
    ],
)
def test_k8s_name(model: str, expected: str) -> None:
    assert k8s_name(model) == expected


def test_k8s_name_long_names_stay_unique_and_short() -> None:
    a, b = k8s_name("x" * 80 + "a"), k8s_name("x" * 80 + "b")
    assert a != b
    assert len(a) <= 63
    assert re.match(DNS1035, a)
    assert label_value("y" * 100) == "y" * 63
    with pytest.raises(DeployError, match="no letters or digits"):
        k8s_name("///")


# Argo CD renders each string of a Go-template ApplicationSet with text/template, the sprig
# functions (less env, expandenv, getHostByName) and missingkey=error; this does the same.
GO_RENDER = """package main

import (
	"bytes"
	"encoding/json"
	"os"
	"text/template"

	"github.com/Masterminds/sprig"
)

func main() {
	var in struct {
		Templates map[string]string        `json:"templates"`
		Params    []map[string]interface{} `json:"params"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	fm := sprig.TxtFuncMap()
	for _, k := range []string{"env", "expandenv", "getHostByName"} {
		delete(fm, k)
	}
	out := []map[string]string{}
	for _, p := range in.Params {
		row := map[string]string{}
		for k, src := range in.Templates {
			t := template.Must(template.New(k).Option("missingkey=error").Funcs(fm).Parse(src))
			var b bytes.Buffer
			if err := t.Execute(&b, p); err != nil {
				panic(err)
			}
			row[k] = b.String()
		}
		out = append(out, row)
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""
GOPATH = Path("/usr/share/gocode")  # Debian's golang-github-masterminds-sprig-dev


def _template_strings(doc: Any, path: str = "") -> dict[str, str]:
    if isinstance(doc, dict):
        return {
            k: v
            for key, value in doc.items()
            for k, v in _template_strings(value, f"{path}.{key}").items()
        }
    if isinstance(doc, list):
        return {
            k: v
            for i, value in enumerate(doc)
            for k, v in _template_strings(value, f"{path}[{i}]").items()
        }
    return {path: doc} if isinstance(doc, str) and "{{" in doc else {}


@pytest.mark.skipif(
    shutil.which("go") is None or not (GOPATH / "src/github.com/Masterminds/sprig").is_dir(),
    reason="needs Go and sprig (apt-get install golang-go golang-github-masterminds-sprig-dev)",
)
def test_argocd_go_templates_render_like_argocd(repo: Path, tmp_path: Path) -> None:
    (tmp_path / "render.go").write_text(GO_RENDER)
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(GOPATH),
        "GOCACHE": str(tmp_path / "gocache"),
    }
    subprocess.run(
        ["go", "build", "-o", "render", "render.go"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
    )
    templates = _template_strings(applicationset("test", repo_url=REPO_URL)["spec"]["template"])
    names = ["iris", "digits", "team-a/churn"]
    params = []
    for name in names:
        rel = f"deploy/test/{name}"
        params.append(
            {
                **yaml.safe_load((repo / rel / "config.yaml").read_text()),
                "path": {"path": rel, "basename": rel.rsplit("/", 1)[-1]},
            }
        )
    proc = subprocess.run(
        [str(tmp_path / "render")],
        input=json.dumps({"templates": templates, "params": params}),
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(proc.stdout)
    for name, row in zip(names, rows, strict=True):
        assert row[".metadata.name"] == f"{k8s_name(name)}-test"
        assert row[".metadata.labels.modelworks.dev/model"] == label_value(name)
        assert row[".spec.source.path"] == "charts/modelcar"
        assert row[".spec.source.helm.parameters[0].value"] == name
        assert row[".spec.source.helm.parameters[5].value"] == DIGEST
    assert rows[2][".metadata.labels.modelworks.dev/tenant"] == "team-a"
    # A reference-layout config has only the five keys: the extras render as "" (no error).
    reference = {
        "chart_path": "charts/modelcar",
        "name": "churn-predictor",
        "image_repository": "quay.io",
        "image_namespace": "acme",
        "version": "f7844fe3d7",
        "path": {"path": "test/churn-predictor", "basename": "churn-predictor"},
    }
    proc = subprocess.run(
        [str(tmp_path / "render")],
        input=json.dumps({"templates": templates, "params": [reference]}),
        capture_output=True,
        text=True,
        check=True,
    )
    [row] = json.loads(proc.stdout)
    assert row[".metadata.labels.modelworks.dev/tenant"] == "default"
    assert row[".spec.source.helm.parameters[2].value"] == "quay.io"
    assert row[".spec.source.helm.parameters[5].value"] == ""  # artifact_digest
