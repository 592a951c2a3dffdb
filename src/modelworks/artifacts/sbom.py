"""A CycloneDX 1.5 SBOM of the training environment (the installed Python distributions).

Built with cyclonedx-python-lib, so the output is the standard's JSON and is checked
against the official 1.5 schema; the component list is computed once per process.
"""

from __future__ import annotations

import copy
import json
import platform
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from modelworks.errors import ArtifactError, ConfigError

SPEC_VERSION = "1.5"
ENVIRONMENT_NAME = "modelworks-training-environment"


@dataclass(frozen=True)
class _Dist:
    name: str  # as published
    version: str
    requires: tuple[str, ...]  # canonical names of unconditional requirements


def environment_sbom(packages: Iterable[str] | None = None) -> dict[str, Any]:
    """Return a CycloneDX 1.5 JSON SBOM of the installed distributions (or `packages` + deps)."""
    key = None if packages is None else tuple(sorted({canonicalize_name(p) for p in packages}))
    doc = copy.deepcopy(_cached_sbom(key))
    doc["serialNumber"] = f"urn:uuid:{uuid.uuid4()}"
    doc["metadata"]["timestamp"] = datetime.now(UTC).isoformat()
    return doc


def with_component(doc: dict[str, Any], component: dict[str, Any]) -> dict[str, Any]:
    """`doc` with one more component (e.g. the ModelCar's base layer), a dependency of the root."""
    out = copy.deepcopy(doc)
    out.setdefault("components", []).append(component)
    root = out["metadata"]["component"]["bom-ref"]
    deps = out.setdefault("dependencies", [])
    for dep in deps:
        if dep.get("ref") == root:
            dep.setdefault("dependsOn", []).append(component["bom-ref"])
    deps.append({"ref": component["bom-ref"]})
    return out


def validate_sbom(doc: dict[str, Any]) -> None:
    """Raise ArtifactError unless `doc` is a CycloneDX JSON SBOM of the shape we write."""
    if not isinstance(doc, dict):
        raise ArtifactError(f"SBOM is a {type(doc).__name__}, expected a JSON object")
    if doc.get("bomFormat") != "CycloneDX" or doc.get("specVersion") != SPEC_VERSION:
        raise ArtifactError(
            f"SBOM: bomFormat/specVersion are {doc.get('bomFormat')!r}/"
            f"{doc.get('specVersion')!r}, expected 'CycloneDX'/'{SPEC_VERSION}'"
        )
    try:
        text = json.dumps(doc)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"SBOM is not JSON-serializable: {exc}") from exc
    from cyclonedx.exception import MissingOptionalDependencyException

    try:
        error = _validator().validate_str(text)
    except MissingOptionalDependencyException as exc:
        raise ConfigError(
            f"SBOM validation needs cyclonedx-python-lib[json-validation]: {exc}"
        ) from exc
    if error is not None:
        detail = getattr(error.data, "message", str(error))[:300]
        where = getattr(error.data, "json_path", "$")
        raise ArtifactError(
            f"SBOM does not match the CycloneDX {SPEC_VERSION} schema at {where}: {detail}"
        )
    _check_shape(doc)


def _check_shape(doc: dict[str, Any]) -> None:
    serial = str(doc.get("serialNumber", ""))
    if not serial.startswith("urn:uuid:"):
        raise ArtifactError(f"SBOM: serialNumber {serial!r} is missing or not a urn:uuid")
    meta = doc.get("metadata") or {}
    for field in ("timestamp", "tools", "component"):
        if not meta.get(field):
            raise ArtifactError(f"SBOM: metadata.{field} is missing")
    components = doc.get("components")
    if not isinstance(components, list):
        raise ArtifactError("SBOM: components is missing or not a list")
    for i, comp in enumerate(components):
        for field in ("type", "name", "version", "purl"):
            if not comp.get(field):
                raise ArtifactError(f"SBOM: components[{i}] ({comp.get('name')!r}) has no {field}")
        if not str(comp["purl"]).startswith("pkg:pypi/"):
            continue  # a system package (the base layer's busybox): not from this environment
        expected = _purl(comp["name"], comp["version"])
        if comp["purl"] != expected:
            raise ArtifactError(
                f"SBOM: components[{i}].purl is {comp['purl']!r}, expected {expected!r}"
            )


@cache
def _cached_sbom(packages: tuple[str, ...] | None) -> dict[str, Any]:
    from cyclonedx.output.json import JsonV1Dot5

    dists = _installed()
    roots = sorted(dists) if packages is None else list(packages)
    missing = [p for p in roots if p not in dists]
    if missing:
        raise ArtifactError(f"SBOM: package(s) not installed: {', '.join(missing)}")
    closure = _closure(roots, dists)
    bom = _bom({name: dists[name] for name in closure}, roots)
    doc: dict[str, Any] = json.loads(JsonV1Dot5(bom).output_as_string())
    return doc


def _bom(dists: dict[str, _Dist], roots: list[str]) -> Any:
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from packageurl import PackageURL

    bom = Bom()
    components = {}
    for name, dist in sorted(dists.items()):
        purl = PackageURL("pypi", name=name, version=dist.version)
        components[name] = Component(
            type=ComponentType.LIBRARY,
            name=dist.name,
            version=dist.version,
            purl=purl,
            bom_ref=purl.to_string(),
        )
    root = Component(
        type=ComponentType.APPLICATION,
        name=ENVIRONMENT_NAME,
        version=f"python-{platform.python_version()}",
        bom_ref=ENVIRONMENT_NAME,
    )
    bom.metadata.component = root
    bom.metadata.tools.components.add(_tool("modelworks"))
    bom.metadata.tools.components.add(_tool("cyclonedx-python-lib"))
    for component in components.values():
        bom.components.add(component)
    bom.register_dependency(root, [components[r] for r in roots])
    for name, dist in dists.items():
        deps = [components[d] for d in dist.requires if d in components]
        bom.register_dependency(components[name], deps)
    return bom


def _tool(name: str) -> Any:
    from cyclonedx.model.component import Component, ComponentType

    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        version = "unknown"
    return Component(type=ComponentType.APPLICATION, name=name, version=version)


@cache
def _installed() -> dict[str, _Dist]:
    """The installed distributions, read once per process (a pool's forked workers inherit
    them from the parent's preload): each new set of packages then only builds its BOM."""
    found: dict[str, _Dist] = {}
    for dist in metadata.distributions():
        meta = dist.metadata  # parsed once: each access re-reads the file
        name = meta["Name"]
        if name and canonicalize_name(name) not in found:  # first on sys.path wins
            requires = _requirements(meta.get_all("Requires-Dist") or [])
            found[canonicalize_name(name)] = _Dist(name, meta["Version"], requires)
    return found


def _closure(roots: list[str], dists: dict[str, _Dist]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in dists:
            continue
        seen.add(name)
        todo.extend(dists[name].requires)
    return seen


def _requirements(lines: list[str]) -> tuple[str, ...]:
    names = []
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(canonicalize_name(req.name))
    return tuple(names)


def _purl(name: str, version: str) -> str:
    from packageurl import PackageURL

    return PackageURL("pypi", name=canonicalize_name(name), version=version).to_string()


@cache
def _validator() -> Any:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    return JsonStrictValidator(SchemaVersion.V1_5)


KEY_PACKAGES = (
    "scikit-learn",
    "numpy",
    "scipy",
    "pandas",
    "skops",
    "onnx",
    "onnxruntime",
    "skl2onnx",
    "xgboost",
    "lightgbm",
    "torch",
    "modelworks",
)


def sbom_summary(doc: dict[str, Any]) -> dict[str, Any]:
    """Format, spec version, component count and the versions of a few key packages."""
    found = doc.get("components")
    components = [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []
    versions = {str(c.get("name", "")).lower(): c.get("version") for c in components}
    meta = _dict(doc.get("metadata"))
    base = [
        f"{c.get('name')} {c.get('version')}"
        for c in components
        if not str(c.get("purl", "")).startswith("pkg:pypi/")
    ]
    return {
        "format": doc.get("bomFormat"),
        "spec_version": doc.get("specVersion"),
        "components": len(components),
        "serial": doc.get("serialNumber"),
        "created": meta.get("timestamp"),
        "environment": _dict(meta.get("component")).get("version"),
        "key_packages": {p: versions[p] for p in KEY_PACKAGES if p in versions},
        "base_image": base[0] if base else None,
    }


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def artifact_sbom(oci_layout: str, repo: str, digest: str) -> dict[str, Any]:
    """The SBOM summary of a stored artifact (``{"error": …}`` when it cannot be read)."""
    from modelworks.artifacts.oci import OCIStore
    from modelworks.errors import ModelworksError

    layout = Path(oci_layout)
    depth = repo.count("/") + 1
    if len(layout.parents) <= depth or layout.parents[depth - 1].name != "repos":
        return {"error": f"{layout} is not a repos/<repo> folder of an OCI store"}
    try:
        doc = json.loads(OCIStore(layout.parents[depth]).read_file(digest, "sbom.json"))
    except (ModelworksError, OSError, ValueError) as exc:
        return {"error": f"cannot read sbom.json: {exc}"}
    return sbom_summary(doc) if isinstance(doc, dict) else {"error": "sbom.json is not an object"}
