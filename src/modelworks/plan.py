"""Plan: a pure diff of fingerprints in Git against versions in the registry.

A model's fingerprint is sha256 over the canonical JSON of everything that decides the
trained result:

    {"line": "mw-line-1",                        <- the line's own format version
     "spec": {data_source, hyperparameters,        <- training-relevant spec fields
              pipeline, runtime},
     "data_hash": "5c2145f3…",                     <- DVC md5 / local tree hash
     "pipeline_version": "v1.23.0",
     "pipeline_hash": "9f1c…"}                     <- content hash of the pipeline folder

    fingerprint = sha256(canonical) = "f7844fe3d7a1…";  version = fingerprint[:10]

For each spec the plan looks the fingerprint up among the model's registered versions:

    no versions yet                -> create  ("new model")
    fingerprint already registered -> unchanged
    otherwise                      -> update, with the reasons read off a diff of the
                                      latest version's inputs and the new ones:
                                      "data 5c2145f3 -> e9a8…", "pipeline v1.23.0 -> v1.29.0",
                                      "hyperparameter epochs 1 -> 5"
    spec, data or pipeline broken  -> error, with the message; the rest is still planned
    spec, pipeline or pointer not  -> error ("models/x.json: not committed (modified); commit
    committed (see provenance.py)     it or pass --allow-dirty"); with --allow-dirty the model
                                      plans, its inputs carry "dirty": true (so its version
                                      differs from the clean one) and it is never deployed
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelworks import LINE_FORMAT
from modelworks._gc import gc_paused
from modelworks.data.confine import TenantRoots
from modelworks.data.sources import DataResolver, owner_problem
from modelworks.errors import ModelworksError, NotFoundError
from modelworks.pipelines.catalog import Catalog, PipelineRef
from modelworks.provenance import Provenance
from modelworks.registry.tenants import sync_declared, tenants
from modelworks.spec import LoadedSpec, ModelSpec, load_specs
from modelworks.tenancy.access import DEFAULT_TENANT
from modelworks.tenancy.config import TenantSettings
from modelworks.tenancy.names import qualified, resolve_ref, split_ref

if TYPE_CHECKING:
    from modelworks.registry.fastread import Reader
    from modelworks.registry.store import Store
    from modelworks.registry.usage import Usage
    from modelworks.workspace import Workspace


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(inputs)).hexdigest()


def version_id(fp: str) -> str:
    """The short version id derived from a fingerprint (like the reference's f7844fe3d7)."""
    return fp[:10]


@dataclass
class ModelPlan:
    """What the plan says about one model."""

    name: str
    action: str
    reasons: list[str] = field(default_factory=list)
    fingerprint: str | None = None
    version: str | None = None
    loaded: LoadedSpec | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    pipeline: PipelineRef | None = None
    commit: str | None = None  # the commit holding exactly this spec; None when it is dirty
    dirty: list[str] = field(default_factory=list)  # uncommitted inputs (with --allow-dirty)
    tenant: str = DEFAULT_TENANT

    @property
    def spec(self) -> ModelSpec:
        assert self.loaded is not None
        assert self.loaded.spec is not None
        return self.loaded.spec

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tenant": self.tenant,
            "action": self.action,
            "reasons": self.reasons,
            "fingerprint": self.fingerprint,
            "version": self.version,
            "dirty": self.dirty,
        }


@dataclass
class Plan:
    models: list[ModelPlan]

    @property
    def summary(self) -> dict[str, int]:
        counts = dict.fromkeys(("create", "update", "unchanged", "error"), 0)
        for m in self.models:
            counts[m.action] += 1
        return counts

    @property
    def changes(self) -> list[ModelPlan]:
        return [m for m in self.models if m.action in ("create", "update")]

    def to_dict(self) -> dict[str, Any]:
        return {"models": [m.to_dict() for m in self.models], "summary": self.summary}


def explain(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Why a model retrains: each input that differs, old -> new."""
    reasons = []
    if old.get("data_hash") != new.get("data_hash"):
        reasons.append(f"data {str(old.get('data_hash'))[:8]} -> {str(new.get('data_hash'))[:8]}")
    if old.get("pipeline_version") != new.get("pipeline_version"):
        reasons.append(f"pipeline {old.get('pipeline_version')} -> {new.get('pipeline_version')}")
    elif old.get("pipeline_hash") != new.get("pipeline_hash"):
        old_hash, new_hash = str(old.get("pipeline_hash"))[:8], str(new.get("pipeline_hash"))[:8]
        reasons.append(f"pipeline hash {old_hash} -> {new_hash}")
    os_, ns = old.get("spec", {}), new.get("spec", {})
    oh, nh = os_.get("hyperparameters", {}), ns.get("hyperparameters", {})
    for key in sorted(set(oh) | set(nh)):
        if oh.get(key) != nh.get(key):
            reasons.append(
                f"hyperparameter {key} {json.dumps(oh.get(key))} -> {json.dumps(nh.get(key))}"
            )
    for key in ("runtime", "pipeline", "data_source"):
        if os_.get(key) != ns.get(key):
            reasons.append(f"{key} {json.dumps(os_.get(key))} -> {json.dumps(ns.get(key))}")
    if old.get("line") != new.get("line"):
        reasons.append(f"line format {old.get('line')} -> {new.get('line')}")
    return reasons or ["inputs changed"]


# The plan's reads, as plain SQL (registry/fastread.py runs it on sqlite3 or SQLAlchemy Core).
FINGERPRINTS = (
    "SELECT m.tenant, m.name, v.fingerprint FROM models m "
    "JOIN model_versions v ON v.model_id = m.id"
)
FAILURES = (
    "SELECT m.tenant, m.name, r.fingerprint, r.error FROM models m JOIN runs r "
    "ON r.model_id = m.id WHERE r.id IN (SELECT max(id) FROM runs GROUP BY model_id) "
    "AND r.status = 'failed'"
)
PIPELINES = "SELECT name, version, hash, snapshot FROM pipeline_versions"
LATEST_INPUTS = (
    "SELECT m.tenant, m.name, v.inputs FROM models m JOIN model_versions v "
    "ON v.model_id = m.id WHERE v.id IN (SELECT max(id) FROM model_versions GROUP BY model_id) "
    "AND {names}"
)


@dataclass
class RegistryView:
    """What the plan needs from the registry, read in a few bulk queries."""

    fingerprints: dict[str, set[str]]
    last_failure: dict[str, tuple[str, str]]
    pipelines: dict[tuple[str, str], tuple[str, str]]

    @classmethod
    def read(cls, reader: Reader) -> RegistryView:
        fps: dict[str, set[str]] = {}
        for tenant, name, fp in reader.rows(FINGERPRINTS, {}):
            fps.setdefault(qualified(tenant, name), set()).add(fp)
        failures = {
            qualified(tenant, name): (fp, err or "")
            for tenant, name, fp, err in reader.rows(FAILURES, {})
        }
        pipes = {(n, v): (h, snap) for n, v, h, snap in reader.rows(PIPELINES, {})}
        return cls(fps, failures, pipes)

    @staticmethod
    def latest_inputs(reader: Reader, names: list[str]) -> dict[str, dict[str, Any]]:
        """The inputs of each (qualified) named model's latest version (only for models that
        changed: decoding every version's JSON would dominate the plan of an unchanged fleet)."""
        from modelworks.registry.fastread import decode_json, in_list

        found: dict[str, dict[str, Any]] = {}
        wanted = set(names)
        bare = sorted({split_ref(n)[1] for n in names})
        for i in range(0, len(bare), 500):
            clause, params = in_list("m.name", bare[i : i + 500], "n")
            for tenant, name, inputs in reader.rows(LATEST_INPUTS.format(names=clause), params):
                if qualified(tenant, name) in wanted:
                    found[qualified(tenant, name)] = decode_json(inputs)
        return found


def model_inputs(spec: ModelSpec, data_hash: str, pipe: PipelineRef) -> dict[str, Any]:
    return {
        "line": LINE_FORMAT,
        "spec": spec.training_inputs(),
        "data_hash": data_hash,
        "pipeline_version": pipe.version,
        "pipeline_hash": pipe.hash,
    }


def uncommitted(
    spec: ModelSpec, pipe: PipelineRef, data: DataResolver, prov: Provenance
) -> list[str]:
    """The pipeline folder and pointer file of a model that differ from HEAD."""
    found = list(prov.pipeline_problems(pipe))
    pointer = data.pointer_of(spec)
    if pointer is not None:
        pointer_problem = prov.file_state(pointer)[0]
        if pointer_problem:
            found.append(pointer_problem)
    return found


def plan_one(
    item: LoadedSpec,
    view: RegistryView,
    data: DataResolver,
    catalog: Catalog,
    prov: Provenance | None = None,
    allow_dirty: bool = False,
) -> ModelPlan:
    """Plan a single loaded spec against the registry view (and, given `prov`, Git)."""
    key, tenant = item.qualified, item.tenant
    if item.spec is None:
        reasons = [item.error or "invalid spec"]
        return ModelPlan(key, "error", reasons, loaded=item, tenant=tenant)
    spec = item.spec
    try:
        pipe = catalog.resolve(spec.pipeline, spec.version_label())
        data_hash = data.resolve(spec).hash
    except ModelworksError as exc:
        return ModelPlan(key, "error", [f"{item.path}: {exc}"], loaded=item, tenant=tenant)
    dirty: list[str] = []
    commit = None
    if prov is not None:
        spec_problem, commit = prov.file_state(str(item.path))
        dirty = ([spec_problem] if spec_problem else []) + uncommitted(spec, pipe, data, prov)
    if dirty and not allow_dirty:
        hint = "; commit it or pass --allow-dirty"
        return ModelPlan(key, "error", [d + hint for d in dirty], loaded=item, tenant=tenant)
    inputs = model_inputs(spec, data_hash, pipe)
    if dirty:
        inputs["dirty"] = True  # only then: clean fingerprints stay what they always were
    fp = fingerprint(inputs)
    mp = ModelPlan(key, "unchanged", [], fp, version_id(fp), item, inputs, pipe, tenant=tenant)
    mp.dirty, mp.commit = dirty, commit
    known = view.fingerprints.get(key)
    if known and fp in known:
        return mp
    failed = view.last_failure.get(key)
    # An update's reasons are filled in by explain_updates, from the latest version's inputs.
    mp.action, mp.reasons = ("update", []) if known else ("create", ["new model"])
    if failed and failed[0] == fp:
        mp.reasons.append(f"retry: the last run failed: {failed[1][:200]}")
    mp.reasons += [f"dirty: {d}" for d in dirty]
    return mp


def explain_updates(reader: Reader, models: list[ModelPlan]) -> None:
    """Put the reasons (old -> new inputs) in front of each update's notes."""
    updates = [m for m in models if m.action == "update"]
    if not updates:
        return
    latest = RegistryView.latest_inputs(reader, [m.name for m in updates])
    for m in updates:
        m.reasons = explain(latest.get(m.name, {}), m.inputs) + m.reasons


def plan(
    ws: Workspace,
    store: Store | None,
    names: list[str] | None = None,
    *,
    allow_dirty: bool = False,
    reader: Reader | None = None,
) -> Plan:
    """Compute the plan for the workspace (or only the named models) from committed inputs.

    With `allow_dirty`, uncommitted specs, pipelines and pointers are planned and marked dirty.
    The registry is read through `reader` when given (store None: a workspace without tenants,
    see cli._common.open_plan_reader), else through `store`.
    """
    if reader is None:
        from modelworks.registry.fastread import for_store

        assert store is not None
        reader = for_store(store, owned=False)
    with gc_paused():
        return _plan(ws, store, reader, names, allow_dirty)


def data_resolver(ws: Workspace) -> DataResolver:
    """A DataResolver that can unseal the sealed secrets S3 data sources name as credentials."""
    from modelworks.security.keys import sealing_keys, secrets_dir
    from modelworks.security.secrets import unseal

    def secret(name: str) -> bytes:
        return unseal(name, sealing_keys(ws)[0], secrets_dir(ws))

    return DataResolver(ws, secret=secret)


def _plan(
    ws: Workspace, store: Store | None, reader: Reader, names: list[str] | None, allow_dirty: bool
) -> Plan:
    owners = tenants(ws, store)
    if ws.settings.tenants:
        assert store is not None, "a workspace with tenants plans with its Store"
        sync_declared(ws, store)
    view = RegistryView.read(reader)
    catalog = Catalog(ws.pipelines_dir, ws.state_dir / "pipelines", view.pipelines)
    data = data_resolver(ws)
    prov = Provenance(ws.root, ws.pipelines_dir)
    prov.prefetch(ws.models_dir)
    try:
        loaded = load_specs(ws.models_dir, tenants=owners, cache_dir=ws.state_dir)
        if names:
            loaded = select_named(loaded, names, ws.show(ws.models_dir))
        roots = {t: TenantRoots(ws.root, t, tuple(cfg.roots(t))) for t, cfg in owners.items()}
        for item in loaded:
            confine_to_tenant(item, owners, roots, data)
        models = [plan_one(item, view, data, catalog, prov, allow_dirty) for item in loaded]
    finally:
        prov.close()
    if owners:
        assert store is not None, "a workspace with tenants plans with its Store"
        check_quotas(ws, store, models, owners)
    explain_updates(reader, models)
    data.save()
    return Plan(models)


def select_named(loaded: list[LoadedSpec], names: list[str], where: str) -> list[LoadedSpec]:
    """The specs named on the command line (`tenant/model`, or a bare name: see
    tenancy.names.resolve_ref); a name that matches no spec is an error."""
    if not loaded:
        raise NotFoundError(f"no model spec named {names[0]!r} in {where}. No specs found.")
    known = [(item.tenant, item.name) for item in loaded]
    wanted = {resolve_ref(name, known, f"the specs in {where}") for name in names}
    return [item for item in loaded if item.qualified in wanted]


def confine_to_tenant(
    item: LoadedSpec,
    owners: dict[str, TenantSettings],
    roots: dict[str, TenantRoots],
    data: DataResolver,
) -> None:
    """With tenants, a spec may read only its tenant's data roots and use only its allowed
    pipelines and environments; a violation becomes the spec's error (nothing is read)."""
    if item.spec is None or not owners:
        return
    spec, tenant = item.spec, item.tenant
    settings = owners.get(tenant, TenantSettings())
    problems = []
    if not settings.allows_pipeline(spec.pipeline):
        allowed = ", ".join(settings.pipelines or []) or "none"
        problems.append(
            f"field 'kubeflow_pipeline': tenant {tenant!r} may not use pipeline "
            f"{spec.pipeline!r} (allowed: {allowed})"
        )
    denied = [e for e in spec.deploy.environments if not settings.allows_env(e)]
    if denied:
        allowed = ", ".join(settings.environments or []) or "none"
        problems.append(
            f"field 'deploy.environments': tenant {tenant!r} may not use {', '.join(denied)} "
            f"(allowed: {allowed})"
        )
    own = roots.get(tenant) or TenantRoots(data.ws.root, tenant, tuple(settings.roots(tenant)))
    data_problem = owner_problem(spec, data, own)
    if data_problem:
        problems.append(data_problem)
    if problems:
        item.error = "; ".join(f"{item.path}: {p}" for p in problems)
        item.spec = None


def check_quotas(
    ws: Workspace, store: Store, models: list[ModelPlan], owners: dict[str, TenantSettings]
) -> None:
    """Over `max_models` or `max_artifact_bytes`: the models past the limit (in name order)
    become errors; the tenant's other models plan normally."""
    from modelworks.registry.usage import Usage, usage

    limited = {t for t, cfg in owners.items() if cfg.quotas.max_models is not None}
    limited |= {t for t, cfg in owners.items() if cfg.quotas.max_artifact_bytes is not None}
    if not limited:
        return
    used = usage(store, ws.oci_dir, limited)
    for tenant in sorted(limited):
        quotas, use = owners[tenant].quotas, used.get(tenant, Usage())
        mine = sorted((m for m in models if m.tenant == tenant), key=lambda m: m.name)
        if quotas.max_models is not None:
            _over_models(mine, quotas.max_models, use, tenant)
        if quotas.max_artifact_bytes is not None:
            _over_bytes(mine, quotas.max_artifact_bytes, use, tenant)


def _over_models(mine: list[ModelPlan], limit: int, use: Usage, tenant: str) -> None:
    registered = use.models
    room = limit - registered
    for m in (m for m in mine if m.action == "create" and m.name not in use.names):
        if room > 0:
            room -= 1
            continue
        m.action, m.reasons = (
            "error",
            [
                f"{_where(m)}tenant {tenant!r} is at its quota max_models={limit} "
                f"({registered} registered); remove a model or raise quotas.max_models"
            ],
        )


def _over_bytes(mine: list[ModelPlan], limit: int, use: Usage, tenant: str) -> None:
    """A new version is expected to be as large as the model's latest one (0 if new)."""
    total = use.artifact_bytes
    for m in (m for m in mine if m.action in ("create", "update")):
        expected = use.latest_bytes.get(m.name, 0)
        if total < limit and total + expected <= limit:
            total += expected
            continue
        m.action, m.reasons = (
            "error",
            [
                f"{_where(m)}tenant {tenant!r} is over its quota max_artifact_bytes={limit} "
                f"({use.artifact_bytes} bytes registered, {expected} more expected); "
                "delete old versions (mw gc) or raise quotas.max_artifact_bytes"
            ],
        )


def _where(m: ModelPlan) -> str:
    return f"{m.loaded.path}: " if m.loaded is not None else ""
