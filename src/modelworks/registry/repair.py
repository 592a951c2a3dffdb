"""`mw fsck --repair`: rebuild the registry from the OCI store's ModelCars and Git's deploy/.

Each registered version was packaged as a ModelCar whose manifest annotations carry what
the registry recorded about it (runs/worker.py `image_annotations`)::

    dev.modelworks.model / .tenant / .fingerprint      -> Model, ModelVersion.fingerprint
    org.opencontainers.image.version                   -> ModelVersion.version
    dev.modelworks.pipeline.{name,version,hash}        -> lineage, PipelineVersion
    dev.modelworks.data.{dataset,hash}, .spec.{path,commit}, .dirty   -> lineage
    models/metrics.json in the layer (or .metrics.*)   -> ModelVersion.metrics
    models/model.sig in the layer                      -> ModelVersion.signed

and each deployment is a commit of deploy/<env>/<model>/config.yaml. Rows are only added,
never changed, so a repair of a partly intact registry keeps what it still has. Runs,
promotion requests, approvals, users, tokens, drift reports and the audit history lived only
in the registry: the report lists them as lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from modelworks import _git
from modelworks._deployrepo import REFERENCE, layout_of, model_names
from modelworks.errors import ModelworksError
from modelworks.registry import audit
from modelworks.registry.fsck import (
    ANNOTATION_PREFIX,
    CONFIG_NAME,
    DEPLOY_DIR,
    FINGERPRINT,
    Report,
    _parse,
    check,
    oci_images,
    registry_state,
)
from modelworks.registry.models import Deployment, Model, ModelVersion, PipelineVersion
from modelworks.tenancy.names import qualified, split_ref

if TYPE_CHECKING:
    from modelworks.artifacts.oci import OCIStore
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

LOST_WITH_THE_REGISTRY = [
    "runs (training history, attempts, durations and the index of their logs)",
    "gated and rejected versions (only registered versions have images)",
    "scan reports (rebuilt versions are marked recovered)",
    "promotion requests and approvals",
    "users and API tokens",
    "drift reports",
    "push records (`mw push` checks the registry again)",
]


@dataclass(frozen=True)
class _Image:
    """A modelworks ModelCar found in the store, with its manifest annotations."""

    repo: str
    tag: str
    digest: str
    notes: dict[str, str]

    def note(self, key: str, default: str = "") -> str:
        return str(self.notes.get(f"{ANNOTATION_PREFIX}.{key}", default))

    @property
    def model(self) -> str:
        return self.note("model", self.repo)

    @property
    def version(self) -> str:
        return str(self.notes.get("org.opencontainers.image.version", self.tag))


def repair(ws: Workspace, store: Store, actor: str) -> Report:
    """Add the models, versions, pipeline versions and deployments the store and Git show."""
    from modelworks.artifacts.oci import OCIStore

    was_new = registry_state(ws) is not None or _is_empty(store)
    oci = OCIStore(ws.oci_dir)
    images = _images(ws, oci)
    counts = {"models": 0, "versions": 0, "pipelines": 0, "deployments": 0}
    with store.session() as s:
        ids = _add_models(s, images, counts)
        _add_versions(s, oci, images, ids, counts)
        _add_pipelines(ws, s, images, counts)
    with store.session() as s:
        counts["deployments"] = _add_deployments(ws, s)
    if any(counts.values()):
        audit.record(
            store, [audit.event("registry.repaired", "registry", actor=actor, after=counts)]
        )
    report = check(ws, store)
    report.repaired = counts
    report.lost = _lost(ws) if was_new else []
    return report


def _is_empty(store: Store) -> bool:
    with store.session() as s:
        return s.scalar(select(Model.id).limit(1)) is None


def _images(ws: Workspace, oci: OCIStore) -> list[_Image]:
    """Every image carrying a fingerprint, oldest first (so the latest version stays latest)."""
    found = []
    for repo, tag, digest in oci_images(ws):
        try:
            notes = oci.manifest(digest).get("annotations", {})
        except ModelworksError:
            continue  # unreadable: `mw fsck` reports it
        if notes.get(FINGERPRINT):
            found.append(_Image(repo, tag, digest, {str(k): str(v) for k, v in notes.items()}))
    created = "org.opencontainers.image.created"
    return sorted(found, key=lambda i: (i.notes.get(created, ""), i.model, i.tag))


def _add_models(s: Any, images: list[_Image], counts: dict[str, int]) -> dict[str, int]:
    rows = s.execute(select(Model.tenant, Model.name, Model.id)).tuples().all()
    ids: dict[str, int] = {qualified(t, n): i for t, n, i in rows}
    for image in images:
        if image.model in ids:
            continue
        row = Model(
            name=split_ref(image.model)[1],
            tenant=image.note("tenant", "default"),
            spec_path=image.note("spec.path") or None,
            pipeline=image.note("pipeline.name") or None,
            labels={},
        )
        s.add(row)
        s.flush()
        ids[image.model] = row.id
        counts["models"] += 1
    return ids


def _add_versions(
    s: Any, oci: OCIStore, images: list[_Image], ids: dict[str, int], counts: dict[str, int]
) -> None:
    have = set(s.execute(select(ModelVersion.model_id, ModelVersion.fingerprint)).tuples())
    for image in images:
        key = (ids[image.model], image.note("fingerprint"))
        if key in have:
            continue
        have.add(key)
        s.add(_version_row(oci, image, key[0]))
        counts["versions"] += 1


def _version_row(oci: OCIStore, image: _Image, model_id: int) -> ModelVersion:
    note = image.note
    dirty = note("dirty") == "true"
    return ModelVersion(
        model_id=model_id,
        version=image.version,
        fingerprint=note("fingerprint"),
        status="registered",
        inputs={
            "line": note("line"),
            "data_hash": note("data.hash"),
            "pipeline_version": note("pipeline.version"),
            "pipeline_hash": note("pipeline.hash"),
        },
        metrics=_metrics(oci, image),
        gates={},
        lineage={
            "spec_path": note("spec.path"),
            "spec_commit": note("spec.commit"),
            "dirty": dirty,
            "uncommitted": [d for d in note("dirty.inputs").split("; ") if d] if dirty else [],
            "pipeline": note("pipeline.name"),
            "pipeline_version": note("pipeline.version"),
            "pipeline_hash": note("pipeline.hash"),
            "dataset": note("data.dataset"),
            "data_hash": note("data.hash"),
            "run_id": None,
            "recovered": True,
        },
        scan={"safe": True, "findings": [], "errors": [], "scanners": {}, "recovered": True},
        signed=_has(oci, image.digest, "model.sig"),
        artifact_digest=image.digest,
        artifact_ref=image.tag,
        oci_layout=str(oci.layout(image.repo)),
    )


def _metrics(oci: OCIStore, image: _Image) -> dict[str, Any]:
    """metrics.json from the layer (exact); the rounded annotations if it cannot be read."""
    try:
        metrics = json.loads(oci.read_file(image.digest, "metrics.json"))
        if isinstance(metrics, dict):
            return metrics
    except (ModelworksError, ValueError):
        pass
    prefix = f"{ANNOTATION_PREFIX}.metrics."
    out: dict[str, Any] = {}
    for key, value in image.notes.items():
        if key.startswith(prefix):
            try:
                out[key[len(prefix) :]] = float(value)
            except ValueError:
                continue
    return out


def _has(oci: OCIStore, digest: str, name: str) -> bool:
    try:
        oci.read_file(digest, name)
    except ModelworksError:
        return False
    return True


def _add_pipelines(ws: Workspace, s: Any, images: list[_Image], counts: dict[str, int]) -> None:
    """The pipeline versions the images were trained with, so plan checks their hashes."""
    have = set(s.execute(select(PipelineVersion.name, PipelineVersion.version)).tuples())
    for image in images:
        name, version, hash_ = (
            image.note(k) for k in ("pipeline.name", "pipeline.version", "pipeline.hash")
        )
        if not (name and version and hash_) or (name, version) in have:
            continue
        have.add((name, version))
        snapshot = ws.state_dir / "pipelines" / hash_
        s.add(PipelineVersion(name=name, version=version, hash=hash_, snapshot=str(snapshot)))
        counts["pipelines"] += 1


def _add_deployments(ws: Workspace, s: Any) -> int:
    """One Deployment row per commit of a deploy config whose version the registry has."""
    have = set(s.execute(select(Deployment.model_id, Deployment.env, Deployment.commit)).tuples())
    rows = s.execute(select(Model.tenant, Model.name, Model.id)).tuples().all()
    ids = {qualified(t, n): i for t, n, i in rows}
    versions = set(s.execute(select(ModelVersion.model_id, ModelVersion.version)).tuples())
    added = 0
    reference = layout_of(ws.deploy_repo) == REFERENCE
    for commit, author, kind, path, cfg in _deploy_history(ws):
        parts = path.split("/")
        env, name, version = (
            parts[0 if reference else 1],
            str(cfg.get("name", "")),
            str(cfg.get("version")),
        )
        if reference:  # the tenant is the folder's; the model's name may end in `-model`
            tenant = parts[1] if len(parts) == 4 else "default"
            names = [qualified(tenant, n) for n in model_names(name)]
            name = next((n for n in names if (ids.get(n), version) in versions), names[-1])
        elif "/" not in name:
            name = qualified(str(cfg.get("tenant") or "default"), name)
        model_id = ids.get(name)
        if model_id is None or (model_id, version) not in versions:
            continue  # `mw fsck` reports the config as naming an unknown version
        if (model_id, env, commit) in have:
            continue
        have.add((model_id, env, commit))
        s.add(
            Deployment(
                model_id=model_id,
                env=env,
                version=version,
                artifact_digest=cfg.get("artifact_digest") or None,
                commit=commit,
                kind=kind,
                actor=author,
            )
        )
        added += 1
    return added


def _deploy_history(ws: Workspace) -> list[tuple[str, str, str, str, dict[str, Any]]]:
    """(commit, author, kind, path, config) for each config written on the first-parent line."""
    repo = ws.deploy_repo
    if not _git.is_repo(repo) or _git.head(repo) is None:
        return []
    reference = layout_of(repo) == REFERENCE
    where = [f"{e}/" for e in ws.settings.environments] if reference else [f"{DEPLOY_DIR}/"]
    log = _git.git(
        repo,
        "log",
        "--reverse",
        "--first-parent",
        "-m",
        "--no-renames",
        "--name-status",
        "--format=%x1e%H%x1f%an%x1f%s",
        "--",
        *where,
    )
    out = []
    for record in log.split("\x1e")[1:]:
        header, *lines = record.strip("\n").split("\n")
        commit, author, subject = [*header.split("\x1f"), "", ""][:3]
        paths = [
            line.split("\t", 1)[1]
            for line in lines
            if line[:1] in ("A", "M")
            and "\t" in line
            and _is_config(line.split("\t", 1)[1], reference)
        ]
        kind = _kind(subject)
        for path, text in _git.cat_files(repo, commit, paths).items():
            out.append((commit, author, kind, path, _parse(text)))
    return out


def _kind(subject: str) -> str:
    """deploy, promote or rollback, from the subjects apply, approve and rollback write."""
    lowered = subject.lower()
    if lowered.startswith("merge promotion"):
        return "promote"
    return "rollback" if lowered.startswith("rollback") else "deploy"


def _is_config(path: str, reference: bool = False) -> bool:
    depth = (2, 3) if reference else (3, 4)
    return path.endswith(f"/{CONFIG_NAME}") and path.count("/") in depth


def _lost(ws: Workspace) -> list[str]:
    """What lived only in the registry; the audit count comes from the signed local anchor."""
    lost = list(LOST_WITH_THE_REGISTRY)
    try:
        from modelworks.security.anchor import read_local

        anchor = read_local(ws)
    except ModelworksError:
        anchor = None
    if anchor and isinstance(anchor.get("seq"), int):
        lost.append(
            f"audit history: {anchor['seq']} event(s), per the signed anchor "
            f"{ws.show(ws.state_dir / 'audit-anchor.json')}; `mw audit verify` will report the "
            "log as truncated"
        )
    else:
        lost.append("audit history")
    return lost
