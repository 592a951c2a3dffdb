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

import gc
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from modelworks import LINE_FORMAT
from modelworks.data.sources import DataResolver
from modelworks.errors import ModelworksError, NotFoundError, did_you_mean
from modelworks.pipelines.catalog import Catalog, PipelineRef
from modelworks.provenance import Provenance
from modelworks.registry.models import Model, ModelVersion, PipelineVersion, Run
from modelworks.spec import LoadedSpec, ModelSpec, load_specs

if TYPE_CHECKING:
    from modelworks.registry.store import Store
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

    @property
    def spec(self) -> ModelSpec:
        assert self.loaded is not None
        assert self.loaded.spec is not None
        return self.loaded.spec

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
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


@dataclass
class RegistryView:
    """What the plan needs from the registry, read in a few bulk queries."""

    fingerprints: dict[str, set[str]]
    last_failure: dict[str, tuple[str, str]]
    pipelines: dict[tuple[str, str], tuple[str, str]]

    @classmethod
    def read(cls, store: Store) -> RegistryView:
        with store.session() as s:
            fps: dict[str, set[str]] = {}
            for name, fp in s.execute(
                select(Model.name, ModelVersion.fingerprint).join(ModelVersion)
            ):
                fps.setdefault(name, set()).add(fp)
            last_run = select(func.max(Run.id)).group_by(Run.model_id)
            failures = {
                name: (fp, err or "")
                for name, fp, err in s.execute(
                    select(Model.name, Run.fingerprint, Run.error)
                    .join(Run)
                    .where(Run.id.in_(last_run), Run.status == "failed")
                )
            }
            pipes = {
                (p.name, p.version): (p.hash, p.snapshot)
                for p in s.scalars(select(PipelineVersion))
            }
        return cls(fps, failures, pipes)

    @staticmethod
    def latest_inputs(store: Store, names: list[str]) -> dict[str, dict[str, Any]]:
        """The inputs of each named model's latest version (only for models that changed:
        decoding every version's JSON would dominate the plan of an unchanged fleet)."""
        found: dict[str, dict[str, Any]] = {}
        with store.session() as s:
            for i in range(0, len(names), 500):
                chunk = names[i : i + 500]
                latest = (
                    select(func.max(ModelVersion.id))
                    .join(Model)
                    .where(Model.name.in_(chunk))
                    .group_by(ModelVersion.model_id)
                )
                found.update(
                    s.execute(
                        select(Model.name, ModelVersion.inputs)
                        .join(ModelVersion)
                        .where(ModelVersion.id.in_(latest))
                    )
                    .tuples()
                    .all()
                )
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
    if item.spec is None:
        return ModelPlan(item.name, "error", [item.error or "invalid spec"], loaded=item)
    spec = item.spec
    try:
        pipe = catalog.resolve(spec.pipeline, spec.version_label())
        data_hash = data.resolve(spec).hash
    except ModelworksError as exc:
        return ModelPlan(spec.name, "error", [f"{item.path}: {exc}"], loaded=item)
    dirty: list[str] = []
    commit = None
    if prov is not None:
        spec_problem, commit = prov.file_state(str(item.path))
        dirty = ([spec_problem] if spec_problem else []) + uncommitted(spec, pipe, data, prov)
    if dirty and not allow_dirty:
        hint = "; commit it or pass --allow-dirty"
        return ModelPlan(spec.name, "error", [d + hint for d in dirty], loaded=item)
    inputs = model_inputs(spec, data_hash, pipe)
    if dirty:
        inputs["dirty"] = True  # only then: clean fingerprints stay what they always were
    fp = fingerprint(inputs)
    mp = ModelPlan(spec.name, "unchanged", [], fp, version_id(fp), item, inputs, pipe)
    mp.dirty, mp.commit = dirty, commit
    known = view.fingerprints.get(spec.name)
    if known and fp in known:
        return mp
    failed = view.last_failure.get(spec.name)
    # An update's reasons are filled in by explain_updates, from the latest version's inputs.
    mp.action, mp.reasons = ("update", []) if known else ("create", ["new model"])
    if failed and failed[0] == fp:
        mp.reasons.append(f"retry: the last run failed: {failed[1][:200]}")
    mp.reasons += [f"dirty: {d}" for d in dirty]
    return mp


def explain_updates(store: Store, models: list[ModelPlan]) -> None:
    """Put the reasons (old -> new inputs) in front of each update's notes."""
    updates = [m for m in models if m.action == "update"]
    if not updates:
        return
    latest = RegistryView.latest_inputs(store, [m.name for m in updates])
    for m in updates:
        m.reasons = explain(latest.get(m.name, {}), m.inputs) + m.reasons


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a bounded burst of allocations.

    Planning 9,000 specs allocates some 10^5 objects that all live until the plan is done;
    the collector's repeated full passes over them (and over the imported libraries) cost
    about a third of the plan and free nothing.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def plan(
    ws: Workspace, store: Store, names: list[str] | None = None, *, allow_dirty: bool = False
) -> Plan:
    """Compute the plan for the workspace (or only the named models) from committed inputs.

    With `allow_dirty`, uncommitted specs, pipelines and pointers are planned and marked dirty.
    """
    with gc_paused():
        return _plan(ws, store, names, allow_dirty)


def data_resolver(ws: Workspace) -> DataResolver:
    """A DataResolver that can unseal the sealed secrets S3 data sources name as credentials."""
    from modelworks.security.keys import sealing_keys, secrets_dir
    from modelworks.security.secrets import unseal

    def secret(name: str) -> bytes:
        return unseal(name, sealing_keys(ws)[0], secrets_dir(ws))

    return DataResolver(ws, secret=secret)


def _plan(ws: Workspace, store: Store, names: list[str] | None, allow_dirty: bool) -> Plan:
    view = RegistryView.read(store)
    catalog = Catalog(ws.pipelines_dir, ws.state_dir / "pipelines", view.pipelines)
    data = data_resolver(ws)
    prov = Provenance(ws.root, ws.pipelines_dir)
    prov.prefetch(ws.models_dir)
    try:
        loaded = load_specs(ws.models_dir)
        if names:
            loaded = select_named(loaded, names, ws.show(ws.models_dir))
        models = [plan_one(item, view, data, catalog, prov, allow_dirty) for item in loaded]
    finally:
        prov.close()
    explain_updates(store, models)
    data.save()
    return Plan(models)


def select_named(loaded: list[LoadedSpec], names: list[str], where: str) -> list[LoadedSpec]:
    """The specs named on the command line; a name that matches no spec is an error."""
    known = {item.name for item in loaded}
    for name in names:
        if name not in known:
            hint = did_you_mean(name, known) or (" No specs found." if not known else "")
            raise NotFoundError(f"no model spec named {name!r} in {where}.{hint}")
    wanted = set(names)
    return [item for item in loaded if item.name in wanted]
