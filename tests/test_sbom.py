"""CycloneDX SBOM of the installed training environment, validated against the schema."""

from __future__ import annotations

import copy
import json
from importlib import metadata
from typing import Any

import pytest

from modelworks.artifacts.sbom import SPEC_VERSION, environment_sbom, validate_sbom
from modelworks.errors import ArtifactError


@pytest.fixture(scope="module")
def full() -> dict[str, Any]:
    return environment_sbom()


@pytest.fixture(scope="module")
def sklearn_only() -> dict[str, Any]:
    return environment_sbom(["scikit-learn"])


def _by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"].lower(): c for c in doc["components"]}


def test_full_environment_sbom_is_valid_cyclonedx(full: dict[str, Any]) -> None:
    validate_sbom(full)
    assert full["bomFormat"] == "CycloneDX"
    assert full["specVersion"] == SPEC_VERSION == "1.5"
    assert full["serialNumber"].startswith("urn:uuid:")
    assert full["metadata"]["component"]["type"] == "application"
    tools = {t["name"] for t in full["metadata"]["tools"]["components"]}
    assert tools == {"modelworks", "cyclonedx-python-lib"}
    json.dumps(full)  # JSON-able as is


def test_scikit_learn_appears_with_its_installed_version(full: dict[str, Any]) -> None:
    version = metadata.version("scikit-learn")
    sklearn = _by_name(full)["scikit-learn"]
    assert sklearn["version"] == version
    assert sklearn["type"] == "library"
    assert sklearn["purl"] == f"pkg:pypi/scikit-learn@{version}"


def test_purls_are_normalized_pypi_purls(full: dict[str, Any]) -> None:
    for comp in full["components"]:
        name = comp["name"].lower().replace("_", "-").replace(".", "-")
        assert comp["purl"] == f"pkg:pypi/{name}@{comp['version']}", comp
    pyyaml = _by_name(full)["pyyaml"]
    assert pyyaml["purl"] == f"pkg:pypi/pyyaml@{metadata.version('PyYAML')}"


def test_selected_packages_bring_their_dependencies_only(
    sklearn_only: dict[str, Any], full: dict[str, Any]
) -> None:
    validate_sbom(sklearn_only)
    names = set(_by_name(sklearn_only))
    assert {"scikit-learn", "numpy", "scipy", "joblib", "threadpoolctl"} <= names
    assert "fastapi" not in names
    assert len(names) < len(full["components"])
    root = next(d for d in sklearn_only["dependencies"] if d["ref"].startswith("modelworks"))
    assert root["dependsOn"] == [f"pkg:pypi/scikit-learn@{metadata.version('scikit-learn')}"]


def test_components_are_cached_but_each_document_is_new(full: dict[str, Any]) -> None:
    again = environment_sbom()
    assert again["components"] == full["components"]
    assert again["serialNumber"] != full["serialNumber"]
    again["components"].clear()  # a caller's edit never leaks into the cache
    assert environment_sbom()["components"] == full["components"]


def test_unknown_package_is_refused() -> None:
    with pytest.raises(ArtifactError, match="not installed: no-such-package-xyz"):
        environment_sbom(["no-such-package-xyz"])


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda d: d.update(bomFormat="SPDX"), "bomFormat/specVersion"),
        (lambda d: d.update(specVersion="1.2"), "bomFormat/specVersion"),
        (lambda d: d["components"][0].update(type="bogus"), "schema at .*components"),
        (lambda d: d["components"][0].pop("purl"), r"components\[0\] .* has no purl"),
        (lambda d: d["components"][0].update(version="0.0.0-forged"), "purl is"),
        (lambda d: d["metadata"].pop("tools"), "metadata.tools is missing"),
        (lambda d: d.pop("serialNumber"), "serialNumber"),
        (lambda d: d.update(extra_field=1), "schema"),
    ],
)
def test_corrupted_sbom_is_refused(full: dict[str, Any], corrupt: Any, message: str) -> None:
    doc = copy.deepcopy(full)
    corrupt(doc)
    with pytest.raises(ArtifactError, match=message):
        validate_sbom(doc)


def test_non_object_is_refused() -> None:
    with pytest.raises(ArtifactError, match="SBOM is a list"):
        validate_sbom([])  # type: ignore[arg-type]
