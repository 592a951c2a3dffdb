"""Model specs: the reference system's format verbatim, short aliases, and our extensions."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelworks.errors import SpecError, did_you_mean

# A model name is an OCI repository path component, so every name can be packaged and pushed.
from modelworks.names import NAME_MAX, NAME_PATTERN, is_name
from modelworks.tenancy.access import DEFAULT_TENANT
from modelworks.tenancy.names import qualified

SPEC_SUFFIXES = (".json", ".yaml", ".yml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class DataSource(_Strict):
    """Where a model's training data comes from."""

    type: Literal["dvc", "s3", "local"]
    dataset: str | None = None
    repo_url: str | None = None
    dvc_hash: str | None = Field(None, pattern=r"^[0-9a-f]{32}(\.dir)?$")
    path: str | None = None
    bucket: str | None = None
    prefix: str | None = None
    pattern: str | None = None
    key: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    credentials: str | None = Field(None, description="A sealed secret with the S3 keys.")


class Gates(_Strict):
    """Metric thresholds a version must pass before it is deployed."""

    min: dict[str, float] = Field(default_factory=dict)
    max: dict[str, float] = Field(default_factory=dict)
    no_regression: bool | list[str] = False
    tolerance: float = Field(0.0, ge=0)


class DeploySettings(_Strict):
    environments: list[Annotated[str, Field(pattern=NAME_PATTERN, max_length=NAME_MAX)]] = Field(
        default_factory=lambda: ["test"]
    )
    auto_deploy: bool = True


class Monitoring(_Strict):
    metric: Literal["psi"] = "psi"
    threshold: float = Field(0.2, gt=0)
    min_samples: int = Field(100, ge=1)
    action: Literal["alert", "retrain"] = "alert"


class ModelSpec(_Strict):
    """One model of the fleet, as declared in models/<name>.json or .yaml."""

    model_name: str = Field(
        pattern=NAME_PATTERN, max_length=128, validation_alias=AliasChoices("model_name", "name")
    )
    data_source: DataSource
    pipeline: str = Field(validation_alias=AliasChoices("kubeflow_pipeline", "pipeline"))
    pipeline_version: str = Field(
        validation_alias=AliasChoices("kubeflow_pipeline_version", "pipeline_version")
    )
    runtime: str = Field("sklearn", validation_alias=AliasChoices("runtime_name", "runtime"))
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("model_hyperparameters", "hyperparameters"),
    )
    tenant: str = Field("default", pattern=NAME_PATTERN)
    gates: Gates = Field(default_factory=Gates)
    deploy: DeploySettings = Field(default_factory=DeploySettings)
    schedule: str | None = None
    monitoring: Monitoring | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("pipeline")
    @classmethod
    def _pipeline_name(cls, value: str) -> str:
        # A pipeline is a folder under pipelines/: '../../elsewhere/pl' must never be imported.
        if not is_name(value):
            raise ValueError(
                f"pipeline name {value!r} is not valid: a pipeline is a folder under "
                "pipelines/, named with lower-case letters, digits and '.', '_' or '-' "
                "(no '/' or '..')"
            )
        return value

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, value: str) -> str:
        if value not in RUNTIMES:
            raise ValueError(f"unknown runtime {value!r}; expected one of {', '.join(RUNTIMES)}")
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from croniter import croniter

            if not croniter.is_valid(value):
                raise ValueError(f"{value!r} is not a valid cron expression")
        return value

    @property
    def name(self) -> str:
        return self.model_name

    def version_label(self) -> str:
        """The pipeline version with the reference system's '<pipeline>-' prefix removed."""
        prefix = f"{self.pipeline}-"
        v = self.pipeline_version
        return v[len(prefix) :] if v.startswith(prefix) else v

    def training_inputs(self) -> dict[str, Any]:
        """The spec fields that decide the trained result (part of the fingerprint)."""
        ds = self.data_source
        source: dict[str, Any] = {"type": ds.type, "dataset": ds.dataset, "path": ds.path}
        if ds.type == "s3":  # only then: other sources keep the fingerprints they had
            source.update(bucket=ds.bucket, prefix=ds.prefix, key=ds.key, pattern=ds.pattern)
        return {
            "data_source": source,
            "hyperparameters": self.hyperparameters,
            "pipeline": self.pipeline,
            "runtime": self.runtime,
        }


RUNTIMES = ("sklearn", "onnx", "xgboost", "lightgbm")
ALLOWED_FIELDS = {
    "model_name",
    "name",
    "data_source",
    "kubeflow_pipeline",
    "pipeline",
    "kubeflow_pipeline_version",
    "pipeline_version",
    "runtime_name",
    "runtime",
    "model_hyperparameters",
    "hyperparameters",
    "tenant",
    "gates",
    "deploy",
    "schedule",
    "monitoring",
    "labels",
}


@dataclass
class LoadedSpec:
    """A spec file and either its parsed spec or the error that stopped it."""

    path: Path
    spec: ModelSpec | None = None
    error: str | None = None
    raw: dict[str, Any] | None = None
    folder: str | None = None  # the tenant folder models/<tenant>/ it lies in, with tenants

    @property
    def name(self) -> str:
        if self.spec is not None:
            return self.spec.model_name
        raw_name = (self.raw or {}).get("model_name") or (self.raw or {}).get("name")
        return str(raw_name) if raw_name else self.path.stem

    @property
    def tenant(self) -> str:
        """The owning tenant (as far as it is known when the spec is broken)."""
        if self.spec is not None:
            return self.spec.tenant
        raw_tenant = (self.raw or {}).get("tenant")
        if self.folder:
            return self.folder
        return raw_tenant if isinstance(raw_tenant, str) and raw_tenant else DEFAULT_TENANT

    @property
    def qualified(self) -> str:
        """`tenant/name` (bare for the default tenant): the model's key everywhere."""
        return qualified(self.tenant, self.name)


def _read_raw(path: Path, text: bytes | None = None) -> dict[str, Any]:
    if text is None:
        text = path.read_bytes()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), f"not valid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(str(path), f"not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(str(path), f"expected a mapping of fields, got {type(data).__name__}")
    return data


def _explain(path: Path, raw: dict[str, Any], exc: ValidationError) -> SpecError:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    field = ".".join(loc) or None
    if err["type"] == "extra_forbidden":
        same = _same_field(loc)
        if same:  # both spellings of one field (`pipeline` and `kubeflow_pipeline`)
            names = " and ".join(repr(n) for n in same)
            return SpecError(str(path), f"{names} are the same field: give only one", field)
        hint = did_you_mean(loc[-1], _fields_at(loc[:-1]))
        return SpecError(str(path), f"unknown field.{hint}", field)
    if err["type"] == "missing":
        return SpecError(str(path), f"is required but missing.{_typo_of(raw, loc)}", field)
    got = err.get("input")
    shown = json.dumps(got, default=str)[:80] if not isinstance(got, dict) else "a mapping"
    return SpecError(str(path), f"{err['msg']} (got {shown})", field)


def _fields_at(loc: list[str]) -> set[str]:
    """The field names (and aliases) allowed at `loc`: ['gates'] -> {'min', 'max', ...}."""
    if not loc:
        return ALLOWED_FIELDS
    model: type[BaseModel] = ModelSpec
    for part in loc:
        fields = {
            name: f
            for name, f in model.model_fields.items()
            for name in (name, *_aliases(f.validation_alias))
        }
        annotation = fields[part].annotation if part in fields else None
        inner = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type)]
        models = [a for a in inner if issubclass(a, BaseModel)]
        if not models:
            return set()
        model = models[0]
    return {
        n for name, f in model.model_fields.items() for n in (name, *_aliases(f.validation_alias))
    }


def _same_field(loc: list[str]) -> list[str]:
    """A top-level field's spellings when `loc` names one of them beside another (given twice)."""
    if len(loc) != 1:
        return []
    for f in ModelSpec.model_fields.values():
        spellings = _aliases(f.validation_alias)
        if loc[0] in spellings:
            return spellings
    return []


def _aliases(alias: object) -> list[str]:
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str)]
    return [alias] if isinstance(alias, str) else []


def _typo_of(raw: dict[str, Any], loc: list[str]) -> str:
    """' Is 'data_sorce' a typo of it?' when an unknown key beside the missing one is close."""
    here: Any = raw
    for part in loc[:-1]:
        here = here.get(part) if isinstance(here, dict) else None
    if not isinstance(here, dict):
        return ""
    unknown = [k for k in here if isinstance(k, str) and k not in _fields_at(loc[:-1])]
    match = get_close_matches(loc[-1], unknown, n=1)
    return f" Is {match[0]!r} a typo of it?" if match else ""


def parse_spec(path: Path, raw: dict[str, Any]) -> ModelSpec:
    """Validate one raw spec; SpecError names the file and the field."""
    try:
        spec = ModelSpec.model_validate(raw)
    except ValidationError as exc:
        raise _explain(path, raw, exc) from None
    ds = spec.data_source
    if ds.type == "dvc" and not ds.dataset:
        raise SpecError(str(path), "a dvc data source needs 'dataset'", "data_source.dataset")
    if ds.type == "local" and not (ds.path or ds.dataset):
        raise SpecError(str(path), "a local data source needs 'path'", "data_source.path")
    if ds.type == "s3" and not ds.bucket:
        raise SpecError(str(path), "an s3 data source needs 'bucket'", "data_source.bucket")
    if ds.type == "s3" and ds.key and (ds.prefix or ds.pattern):
        raise SpecError(
            str(path),
            "an s3 data source names one object ('key') or a listing ('prefix', 'pattern'), "
            "not both",
            "data_source.key",
        )
    return spec


def load_spec(path: Path) -> LoadedSpec:
    """Read and validate one spec file; errors are kept on the result, not raised."""
    return read_spec_bytes(path)


def read_spec_bytes(path: Path, data: bytes | None = None) -> LoadedSpec:
    """`load_spec` of `path`, whose bytes were already read when `data` is given."""
    raw = None
    try:
        raw = _read_raw(path, data)
        return LoadedSpec(path, parse_spec(path, raw), raw=raw)
    except SpecError as exc:
        return LoadedSpec(path, error=str(exc), raw=raw)
    except OSError as exc:
        return LoadedSpec(path, error=f"{path}: cannot read: {exc.strerror}", raw=raw)


def spec_files(models_dir: Path) -> list[Path]:
    """All spec files under models_dir (tenant sub-folders allowed), sorted."""
    if not models_dir.exists():
        return []
    # os.walk, not rglob + is_file: a fleet has thousands of specs and pathlib costs add up.
    found = []
    for dirpath, _dirs, files in os.walk(models_dir):
        found += [os.path.join(dirpath, f) for f in files if f.endswith(SPEC_SUFFIXES)]
    return [Path(p) for p in sorted(found)]


def folder_tenant(models_dir: Path, path: Path) -> str | None:
    """`models/<tenant>/.../x.json` -> "<tenant>"; a spec directly in models/ -> None."""
    try:
        parts = path.relative_to(models_dir).parts
    except ValueError:
        return None
    return parts[0] if len(parts) > 1 else None


def assign_tenant(item: LoadedSpec, models_dir: Path, declared: frozenset[str]) -> None:
    """Give a loaded spec its owner: its folder `models/<tenant>/` or its `tenant` field.

    Both given and different, or an owner that is not a declared tenant, is the spec's error.
    """
    folder = item.folder = folder_tenant(models_dir, item.path)
    if item.spec is None:
        return
    field = (item.raw or {}).get("tenant")
    shown = ", ".join(sorted(declared))
    if folder is not None and field is not None and folder != field:
        item.error = (
            f"{item.path}: field 'tenant': {field!r} differs from its folder "
            f"models/{folder}/ (tenant {folder!r}); drop the field or move the file"
        )
    elif folder is not None and folder not in declared:
        item.error = (
            f"{item.path}: folder models/{folder}/ is not a declared tenant "
            f"(declared: {shown}); declare it under tenants: in modelworks.yaml"
        )
    elif folder is None and field is None and DEFAULT_TENANT not in declared:
        item.error = (
            f"{item.path}: belongs to no tenant (declared: {shown}); "
            "put it in models/<tenant>/ or set its 'tenant' field"
        )
    elif folder is None and field is not None and field not in declared:
        item.error = (
            f"{item.path}: field 'tenant': {field!r} is not a declared tenant (declared: {shown})"
        )
    else:
        owner = folder or field or DEFAULT_TENANT
        item.spec = item.spec.model_copy(update={"tenant": owner})
        return
    item.spec = None


def load_specs(
    models_dir: Path,
    files: Iterable[Path] | None = None,
    tenants: Iterable[str] | None = None,
    cache_dir: Path | None = None,
) -> list[LoadedSpec]:
    """Load every spec; a bad spec becomes an error entry and never stops the rest.

    With `tenants` (the declared tenant names; empty or None: no tenants, today's rules) each
    spec must belong to one of them, by its folder or its `tenant` field. Names are unique
    per tenant. With `cache_dir` (the workspace's .mw), committed unchanged specs come from the
    spec cache (spec_cache.py) instead of being read and parsed again.
    """
    paths = list(files) if files is not None else spec_files(models_dir)
    if cache_dir is not None:
        from modelworks.spec_cache import load_cached

        loaded = load_cached(models_dir, paths, cache_dir)
    else:
        loaded = [load_spec(p) for p in paths]
    declared = frozenset(tenants or ())
    if declared:
        for item in loaded:
            assign_tenant(item, models_dir, declared)
    by_name: dict[str, list[LoadedSpec]] = {}
    for item in loaded:
        if item.spec is not None:
            by_name.setdefault(item.qualified, []).append(item)
    for name, items in by_name.items():
        if len(items) > 1:
            where = ", ".join(str(i.path) for i in items)
            for item in items:
                item.error = (
                    f"{item.path}: field 'model_name': {items[0].name!r} is declared twice "
                    f"in tenant {item.tenant!r} ({where})"
                    if declared
                    else f"{item.path}: field 'model_name': {name!r} is declared twice ({where})"
                )
                item.spec = None
    return loaded


def dump_spec(raw: dict[str, Any], path: Path) -> None:
    """Write a raw spec back in its own format (used when the line bumps a data hash)."""
    if path.suffix == ".json":
        text = json.dumps(raw, indent=2) + "\n"
    else:
        text = yaml.safe_dump(raw, sort_keys=False)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
