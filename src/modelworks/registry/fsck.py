"""Registry vs OCI store vs Git: refuse a lost registry, and report where the three disagree.

The registry is the only copy of runs, approvals and audit history, but what the fleet *is*
also lives in two other places: every registered version's ModelCar (with its fingerprint,
metrics and lineage as manifest annotations) in the OCI store, and every deployment in Git
(deploy/<env>/<model>/config.yaml). A registry that is missing or 0 bytes while those exist
was lost, not never created: opening it would silently start an empty one, and the next
`mw apply` would retrain the whole fleet. `guard` refuses that; `check` lists each
disagreement; registry/repair.py rebuilds what the store and Git still hold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from sqlalchemy import func, select

from modelworks import _git
from modelworks._deployrepo import REFERENCE, layout_of, model_names
from modelworks.errors import ModelworksError, RegistryError
from modelworks.registry.fastread import layout_repo
from modelworks.registry.models import Deployment, Model, ModelVersion
from modelworks.tenancy.names import qualified

if TYPE_CHECKING:
    from modelworks.artifacts.oci import OCIStore
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

ANNOTATION_PREFIX = "dev.modelworks"  # the keys runs/worker.py writes on each ModelCar
FINGERPRINT = f"{ANNOTATION_PREFIX}.fingerprint"
DEPLOY_DIR = "deploy"
CONFIG_NAME = "config.yaml"


@dataclass(frozen=True)
class Problem:
    """One disagreement between the registry, the OCI store and Git."""

    kind: str  # registry-missing | image-missing | image-unregistered | git-unregistered | ...
    model: str
    detail: str


@dataclass
class Report:
    """What `mw fsck` found (and, after --repair, what it rebuilt and what is lost)."""

    registry: str
    problems: list[Problem] = field(default_factory=list)
    repaired: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "registry": self.registry,
            "ok": self.ok,
            "problems": [asdict(p) for p in self.problems],
            "repaired": self.repaired,
            "lost": self.lost,
        }


# -- the lost-registry guard ------------------------------------------------------------


def sqlite_path(ws: Workspace) -> Path | None:
    """The registry's file when it is SQLite on disk, else None."""
    url = ws.registry_url
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1]
    return Path(path) if path and path != ":memory:" else None


def registry_state(ws: Workspace) -> str | None:
    """ "missing" or "empty (0 bytes)" for a SQLite registry that is not there; else None.

    Read without opening the database, so nothing is written (a server URL is never new here:
    whether it is empty is for `check` to say).
    """
    path = sqlite_path(ws)
    if path is None:
        return None
    if not path.exists():
        return "missing"
    if path.is_file() and path.stat().st_size == 0:
        return "empty (0 bytes)"
    return None


def deploy_configs_at_head(ws: Workspace) -> dict[str, str]:
    """Every deploy/<env>/[<tenant>/]<model>/config.yaml at HEAD of the deploy repo, by path."""
    repo = ws.deploy_repo
    if not _git.is_repo(repo) or _git.head(repo) is None:
        return {}
    if layout_of(repo) == REFERENCE:  # <env>/[<tenant>/]<deployment>/config.yaml at the root
        paths = [
            p
            for env in ws.settings.environments
            for p in _git.ls_files(repo, "HEAD", f"{env}/")
            if p.endswith(f"/{CONFIG_NAME}") and p.count("/") in (2, 3)
        ]
        return _git.cat_files(repo, "HEAD", paths)
    paths = [
        p
        for p in _git.ls_files(repo, "HEAD", f"{DEPLOY_DIR}/")
        if p.endswith(f"/{CONFIG_NAME}") and p.count("/") in (3, 4)
    ]
    return _git.cat_files(repo, "HEAD", paths)


def oci_images(ws: Workspace) -> list[tuple[str, str, str]]:
    """(repo, tag, manifest digest) of every tagged image in the local OCI store."""
    from modelworks.artifacts.oci import OCIStore

    store = OCIStore(ws.oci_dir)
    found = []
    for repo in store.repos():
        try:
            tags = store.tags(repo)
        except ModelworksError:
            continue
        found += [(repo, tag, digest) for tag, digest in sorted(tags.items())]
    return found


def guard(ws: Workspace, store: Store | None = None) -> None:
    """Refuse a lost registry: missing, 0 bytes, or (given `store`) without a single version,
    while Git has deployments or the OCI store has images. A brand-new workspace passes."""
    state = registry_state(ws) if store is None else _empty(store)
    if state is None:
        return
    found = []
    configs = deploy_configs_at_head(ws)
    if configs:
        found.append(f"{len(configs)} deployment config(s) in Git (e.g. {min(configs)})")
    images = oci_images(ws)
    if images:
        found.append(f"{len(images)} image(s) in the OCI store {ws.show(ws.oci_dir)}")
    if not found:
        return  # a brand-new workspace: creating the registry is right
    raise RegistryError(
        f"the registry {_registry_name(ws)} is {state}, but this workspace has "
        f"{' and '.join(found)}: it was lost, and starting an empty one would retrain the whole "
        "fleet. Run `mw fsck --repair` to rebuild it from the OCI store and Git, or restore "
        "it from a backup"
    )


def _empty(store: Store) -> str | None:
    """ "empty (no model versions)" when the registry has not a single version row."""
    with store.session() as s:
        if s.scalar(select(ModelVersion.id).limit(1)) is None:
            return "empty (no model versions)"
    return None


# -- checking ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Version:
    model: str
    version: str
    fingerprint: str
    digest: str | None
    ref: str | None
    repo: str  # its OCI repository: the name, `<tenant namespace>/<name>` for other tenants


def _registry_rows(store: Store) -> tuple[list[_Version], dict[tuple[str, str], str]]:
    """Registered versions, and the latest recorded deployment per (model, env)."""
    with store.session() as s:
        versions = [
            _Version(
                qualified(tenant, name),
                v.version,
                v.fingerprint,
                v.artifact_digest,
                v.artifact_ref,
                layout_repo(v.oci_layout) if v.oci_layout else qualified(tenant, name),
            )
            for tenant, name, v in s.execute(
                select(Model.tenant, Model.name, ModelVersion)
                .join(ModelVersion)
                .where(ModelVersion.status == "registered")
            ).tuples()
        ]
        latest = select(func.max(Deployment.id)).group_by(Deployment.model_id, Deployment.env)
        deployed = {
            (qualified(tenant, name), d.env): d.version
            for tenant, name, d in s.execute(
                select(Model.tenant, Model.name, Deployment)
                .join(Model)
                .where(Deployment.id.in_(latest))
            ).tuples()
        }
    return versions, deployed


def check(ws: Workspace, store: Store | None) -> Report:
    """Every disagreement between the registry (None: it is missing), the store and Git."""
    from modelworks.artifacts.oci import OCIStore

    report = Report(registry=_registry_name(ws))
    versions: list[_Version] = []
    deployed: dict[tuple[str, str], str] = {}
    if store is None:
        state = registry_state(ws) or "missing"
        report.problems.append(Problem("registry-missing", "", f"{report.registry} is {state}"))
    else:
        versions, deployed = _registry_rows(store)
    oci = OCIStore(ws.oci_dir)
    report.problems += _missing_images(oci, versions)
    report.problems += _unregistered_images(oci, versions)
    report.problems += _git_disagreements(ws, versions, deployed)
    return report


def _registry_name(ws: Workspace) -> str:
    path = sqlite_path(ws)
    return str(path) if path is not None else "the registry"


def _missing_images(oci: OCIStore, versions: list[_Version]) -> list[Problem]:
    """Registered versions whose ModelCar is gone from (or retagged in) the store."""
    problems = []
    for v in versions:
        what = f"{v.model} {v.version} ({v.digest})"
        try:
            image = oci.resolve(v.repo, v.ref or v.version)
            if v.digest and image.digest != v.digest:
                problems.append(
                    Problem("image-missing", v.model, f"{what}: the store has {image.digest}")
                )
                continue
            manifest = oci.manifest(image.digest)
            for desc in [manifest["config"], *manifest["layers"]]:
                if not oci.has_blob(desc["digest"]):
                    raise RegistryError(f"blob {desc['digest']} is missing")
        except ModelworksError as exc:
            problems.append(Problem("image-missing", v.model, f"{what}: {exc}"))
    return problems


def _unregistered_images(oci: OCIStore, versions: list[_Version]) -> list[Problem]:
    """modelworks images (they carry a fingerprint) with no registered version."""
    known = {(v.model, v.fingerprint) for v in versions}
    problems = []
    for repo in oci.repos():
        for tag, digest in _tags(oci, repo):
            try:
                notes = oci.manifest(digest).get("annotations", {})
            except ModelworksError:
                continue  # a broken image of a registered version is reported as missing
            fp = notes.get(FINGERPRINT)
            model = notes.get(f"{ANNOTATION_PREFIX}.model", repo)
            if fp and (model, fp) not in known:
                problems.append(
                    Problem(
                        "image-unregistered",
                        model,
                        f"{repo}:{tag} ({digest}) is in the store but not in the registry",
                    )
                )
    return problems


def _tags(oci: OCIStore, repo: str) -> list[tuple[str, str]]:
    try:
        return sorted(oci.tags(repo).items())
    except ModelworksError:
        return []


def _git_disagreements(
    ws: Workspace, versions: list[_Version], deployed: dict[tuple[str, str], str]
) -> list[Problem]:
    """Deploy configs naming unknown versions, and deployment rows Git does not show."""
    known = {(v.model, v.version): v.digest for v in versions}
    problems = []
    in_git: dict[tuple[str, str], str] = {}
    reference = layout_of(ws.deploy_repo) == REFERENCE
    for path, text in sorted(deploy_configs_at_head(ws).items()):
        parts = path.split("/")
        env = parts[0] if reference else parts[1]
        cfg = _parse(text)
        name, version = str(cfg.get("name", "")), str(cfg.get("version", ""))
        if reference:  # the tenant is the folder's; the name may drop `-model`
            tenant = parts[1] if len(parts) == 4 else "default"
            names = [qualified(tenant, n) for n in model_names(name)]
            name = next((n for n in names if (n, version) in known), names[-1])
        elif "/" not in name:
            name = qualified(str(cfg.get("tenant") or "default"), name)
        digest = str(cfg.get("artifact_digest", ""))
        in_git[(name, env)] = version
        if (name, version) not in known:
            detail = f"{path} deploys {name} {version}, which the registry does not have"
            problems.append(Problem("git-unregistered", name, detail))
        elif digest and known[(name, version)] != digest:
            detail = (
                f"{path} deploys {name} {version} as {digest}, but the registry "
                f"recorded {known[(name, version)]}"
            )
            problems.append(Problem("git-digest", name, detail))
    for (name, env), version in sorted(deployed.items()):
        if in_git.get((name, env)) != version:
            shown = in_git.get((name, env)) or "nothing"
            detail = (
                f"the registry records {name} {version} deployed in {env}, "
                f"but Git shows {shown} in "
                + (f"{env}/" if reference else f"{DEPLOY_DIR}/{env}/{name}/{CONFIG_NAME}")
            )
            problems.append(Problem("deployment-not-in-git", name, detail))
    return problems


def _parse(text: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return doc if isinstance(doc, dict) else {}
