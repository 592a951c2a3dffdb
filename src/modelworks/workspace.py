"""The workspace: modelworks.yaml, where each part lives, and every setting with its default."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from modelworks.errors import ConfigError, SettingsError
from modelworks.names import check_name
from modelworks.tenancy.config import TenantSettings

CONFIG_FILE = "modelworks.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Paths(_Section):
    models: str = Field("models", description="Folder of model specs (or a git repo path).")
    pipelines: str = Field("pipelines", description="Folder of training pipelines.")
    data: str = Field("data", description="Folder of datasets and their .dvc pointer files.")
    deploy: str = Field(
        ".",
        description="Deploy repository: '.' is the workspace itself; another repository's "
        "path, or a Git URL (cloned into <state_dir>/deploy-repo, pushed to after each commit).",
    )


class RegistrySettings(_Section):
    url: str | None = Field(None, description="SQLAlchemy URL; default SQLite under state_dir.")


class ExecutorSettings(_Section):
    kind: Literal["local", "ray", "kfp"] = Field(
        "local", description="Where training jobs run (kfp: on the `kfp.host` endpoint)."
    )
    workers: int = Field(0, ge=0, description="Worker processes; 0 means one per core.")
    timeout: float = Field(3600.0, gt=0, description="Seconds before a stuck job is killed.")
    retries: int = Field(2, ge=0, description="Retries of a failed job, with backoff.")


class RaySettings(_Section):
    address: str | None = Field(None, description="Ray cluster address; absent starts a local one.")


class KFPSettings(_Section):
    host: str | None = Field(
        None, description="URL of the Kubeflow Pipelines API that executor.kind kfp submits to."
    )
    token_env: str | None = Field(
        None, description="Environment variable holding the API's bearer token."
    )
    token_secret: str | None = Field(
        None, description="Sealed secret (`mw secret seal NAME`) holding the bearer token."
    )
    namespace: str | None = Field(
        None, description="Namespace of a multi-user deployment; absent for single-user."
    )
    experiment: str = Field("modelworks", description="Experiment the runs are created in.")
    pipeline_root: str | None = Field(
        None, description="Where runs write their artifacts; absent uses the server's default."
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint (minio) of s3:// artifact URIs; credentials from AWS_*."
    )
    timeout: float = Field(30.0, gt=0, description="Seconds per API request.")
    poll_interval: float = Field(5.0, gt=0, description="Seconds between run status checks.")
    verify_tls: bool = Field(True, description="Check the endpoint's TLS certificate.")


class DataSettings(_Section):
    cache: str = Field(".mw/cache", description="DVC-layout content cache.")
    remote: str | None = Field(
        None, description="A DVC remote: a local folder or s3://BUCKET[/PREFIX]."
    )
    endpoint_url: str | None = Field(
        None, description="S3 endpoint of data.remote and of s3 sources that name none."
    )
    region: str | None = Field(None, description="S3 region of data.remote and of s3 sources.")
    watch: list[str] = Field(
        default_factory=list, description="Folders whose new files are versioned."
    )
    roots: list[str] = Field(
        default_factory=list,
        description="Folders outside the workspace that local data sources, globs and data "
        "repos may read (relative paths are against the workspace); nothing else is read.",
    )
    max_files: int = Field(
        10000, ge=1, description="Most files one local (glob) or S3 data source may match."
    )


class OCISettings(_Section):
    store: str = Field(".mw/oci", description="Local OCI image layout store.")
    registry: str | None = Field(None, description="host[:port] of an OCI registry to push to.")
    namespace: str = Field("modelworks", description="Repository namespace in the registry.")
    insecure: bool = Field(False, description="Use plain HTTP for the registry.")
    base_image: str = Field(
        "auto",
        description="ModelCar base layer with sh, ln and sleep for KServe: 'auto' (busybox when "
        "a static one is installed, else none with a warning), 'busybox' (Debian's "
        "busybox-static, required), the path of a static busybox, or 'none' (model-only).",
    )

    @field_validator("base_image")
    @classmethod
    def _check_base_image(cls, value: str) -> str:
        # The same rule as artifacts.baselayer.check_setting (the workspace imports no layer).
        if value in ("auto", "busybox", "none") or os.path.isabs(value):
            return value
        raise ValueError(
            f"oci.base_image {value!r}: expected 'auto', 'busybox' (Debian's busybox-static), "
            "'none' "
            "(model-only images) or the absolute path of a statically linked busybox"
        )


HttpAuth = Literal["none", "token"]


class EnvironmentServing(_Section):
    auth: HttpAuth | None = Field(
        None, description="Overrides serving.auth for this environment's `mw serve`."
    )


class Environment(_Section):
    auto_deploy: bool = Field(False, description="Versions that pass their gates deploy here.")
    approvals: int = Field(1, ge=0, description="Approvals a promotion here needs.")
    serving: EnvironmentServing = Field(
        default_factory=EnvironmentServing, description="Serving settings of this environment."
    )


def _default_envs() -> dict[str, Environment]:
    return {
        "test": Environment(auto_deploy=True, approvals=0),
        "prod": Environment(auto_deploy=False, approvals=1),
    }


class ServingSettings(_Section):
    sample_rate: float = Field(0.1, ge=0, le=1, description="Share of requests logged.")
    max_memory: str = Field("1GiB", description="Memory budget of loaded models.")
    poll_interval: float = Field(10.0, gt=0, description="Seconds between Git re-reads.")
    port: int = Field(8080, description="Default port of `mw serve`.")
    max_body_bytes: int = Field(
        16 * 2**20,
        gt=0,
        description="Largest request body `mw serve` reads (bytes); larger ones get 413.",
    )
    auth: HttpAuth | None = Field(
        None,
        description="HTTP auth of `mw serve`, `/metrics`, `/admin/*` and the controller's "
        "endpoints: none, or token (Authorization: Bearer; recommended). Unset: none on a "
        "loopback bind, token on any other.",
    )
    token_cache_seconds: float = Field(
        2.0,
        ge=0,
        description="Seconds an HTTP server trusts a token it has checked before checking it "
        "against the registry again (0: every request); a revoked token stops within this.",
    )


class GCSettings(_Section):
    min_age: float = Field(
        3600.0,
        ge=0,
        description="`mw gc` removes unreferenced blobs, work folders and temp files only "
        "when older than this many seconds (a writer racing gc keeps its files).",
    )
    interval: float = Field(
        0.0,
        ge=0,
        description="Seconds between the controller's gc passes; 0 (the default) never runs gc.",
    )


class SigningSettings(_Section):
    private_key: str = Field(".mw/keys/signing-key.pem", description="EC private key (PEM).")
    public_key: str = Field("keys/signing-key.pub.pem", description="Public key, committed.")


class AuditSettings(_Section):
    anchor_file: str = Field(
        "audit/anchor.json",
        description="Signed head of the audit log, committed by `mw audit verify`.",
    )
    commit_anchor: bool = Field(
        True,
        description="`mw audit verify` commits the signed head when it moved, so deleting "
        ".mw/ cannot hide a truncated log.",
    )


class GitopsSettings(_Section):
    layout: Literal["modelworks", "reference"] = Field(
        "modelworks",
        description="Where configs live in the deploy repo: 'modelworks' (deploy/<env>/<model>/"
        "config.yaml) or 'reference' (<env>/<model>/config.yaml at its root, the five "
        "reference keys only).",
    )


class ScanSettings(_Section):
    severity: Literal["low", "medium", "high", "critical"] = Field(
        "medium", description="Findings at or above this block a version."
    )
    max_depth: int = Field(
        5, ge=1, description="Archives/compressed streams opened inside one another; deeper blocks."
    )
    max_expanded_bytes: int = Field(
        4 << 30, ge=0, description="Bytes archives and streams may expand to in one scan."
    )
    max_members: int = Field(
        100_000, ge=0, description="Archive members one scan opens; more blocks (a zip bomb)."
    )

    def limits(self) -> dict[str, int]:
        """The scanner's limits, as a job carries them to a worker."""
        return self.model_dump(exclude={"severity"})


class ControllerSettings(_Section):
    poll_interval: float = Field(30.0, gt=0, description="Seconds between repository fetches.")
    webhook_secret: str | None = Field(None, description="HMAC secret of POST /hooks/git.")
    port: int = Field(8700, description="Port of the controller's HTTP endpoints.")
    max_body_bytes: int = Field(
        25 * 2**20,
        gt=0,
        description="Largest request body of the controller's endpoints (GitHub sends at most "
        "25 MB); larger ones get 413.",
    )


class ServerSettings(_Section):
    port: int = Field(
        8800, ge=1, le=65535, description="Port of `mw server` (the control-plane API)."
    )
    max_body_bytes: int = Field(
        2**20, gt=0, description="Largest request body of the control-plane API; larger get 413."
    )


class ForgeSettings(_Section):
    provider: Literal["local", "github"] = Field(
        "local", description="Who hosts promotion requests."
    )
    repo: str | None = Field(None, description="owner/name of the GitHub repository.")
    token_env: str = Field("GITHUB_TOKEN", description="Environment variable holding the token.")
    api_url: str = Field("https://api.github.com", description="GitHub API base URL.")
    timeout: float = Field(10.0, gt=0, description="Seconds per forge request.")


class OIDCSettings(_Section):
    issuer: str = Field(description="Expected `iss` of a JWT (the provider's issuer URL).")
    audience: str = Field(description="Expected `aud` of a JWT (the client id).")
    jwks_url: str | None = Field(None, description="URL of the provider's JWKS (its keys).")
    jwks_file: str | None = Field(None, description="A JWKS file instead of jwks_url.")
    roles_claim: str = Field(
        "roles", description="Claim holding role names; dots reach nested (realm_access.roles)."
    )
    user_claim: str = Field(
        "preferred_username", description="Claim naming the user (falls back to `sub`)."
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> OIDCSettings:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("set exactly one of jwks_url and jwks_file")
        return self


class AuthSettings(_Section):
    mode: Literal["local", "token"] = Field(
        "local",
        description="local: the git user, --as allowed, audited as unauthenticated; "
        "token: every command needs MW_TOKEN or --token.",
    )
    oidc: OIDCSettings | None = Field(
        None, description="Accept JWTs from an OIDC provider (Keycloak, Dex) as tokens."
    )


class Settings(_Section):
    """Everything modelworks.yaml can say; every field has a working default."""

    version: int = 1
    name: str = "modelworks"
    state_dir: str = Field(".mw", description="Local state (git-ignored).")
    paths: Paths = Field(default_factory=Paths)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    kfp: KFPSettings = Field(default_factory=KFPSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    oci: OCISettings = Field(default_factory=OCISettings)
    environments: dict[str, Environment] = Field(default_factory=_default_envs)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    signing: SigningSettings = Field(default_factory=SigningSettings)
    scan: ScanSettings = Field(default_factory=ScanSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    controller: ControllerSettings = Field(default_factory=ControllerSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    gc: GCSettings = Field(default_factory=GCSettings)
    forge: ForgeSettings = Field(default_factory=ForgeSettings)
    gitops: GitopsSettings = Field(default_factory=GitopsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    tenants: dict[str, TenantSettings] = Field(
        default_factory=dict,
        description="Teams sharing this platform (modelworks.tenancy.config); once any is "
        "declared, every spec belongs to one.",
    )


# Environment variables that override the file: name -> (section, field).
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "MW_REGISTRY_URL": ("registry", "url"),
    "MW_EXECUTOR": ("executor", "kind"),
    "MW_WORKERS": ("executor", "workers"),
    "MW_RAY_ADDRESS": ("ray", "address"),
    "MW_OCI_REGISTRY": ("oci", "registry"),
    "MW_DATA_REMOTE": ("data", "remote"),
    "MW_WEBHOOK_SECRET": ("controller", "webhook_secret"),
}


def _format_validation(path: Path, exc: ValidationError, from_env: dict[str, str]) -> str:
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    field = ".".join(loc)
    var = from_env.get(".".join(loc[:2]))
    if var is not None:  # the value came from the environment, not from the file
        return f"environment variable {var}: {first['msg']} (got {first.get('input')!r})"
    return f"{path}: field '{field}': {first['msg']} (got {first.get('input')!r})"


def _read_yaml(path: Path) -> dict[str, Any]:
    """modelworks.yaml as a mapping (missing means {}); SettingsError naming the file if not."""
    if not path.exists():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SettingsError(f"{path}: not a text file (expected UTF-8 YAML)") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot be read: {exc.strerror}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise SettingsError(f"{path}: expected a mapping at the top level")
    return loaded or {}


def load_settings(path: Path, environ: dict[str, str] | None = None) -> Settings:
    """Read modelworks.yaml (missing means all defaults) and apply MW_* overrides."""
    raw = _read_yaml(path)
    env = os.environ if environ is None else environ
    from_env: dict[str, str] = {}
    for var, (section, field) in ENV_OVERRIDES.items():
        if env.get(var):
            section_raw = raw.setdefault(section, {})
            if not isinstance(section_raw, dict):
                raise SettingsError(f"{path}: field '{section}': expected a mapping")
            section_raw[field] = env[var]
            from_env[f"{section}.{field}"] = var
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise SettingsError(_format_validation(path, exc, from_env)) from None
    try:
        _check_names(path, settings)
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None
    return settings


def _check_names(path: Path, settings: Settings) -> None:
    """Environment and tenant names become folders and refs: they must be plain names."""
    for env in settings.environments:
        check_name("environment", env, f"{path}: field 'environments'")
    for tenant in settings.tenants:
        check_name("tenant", tenant, f"{path}: field 'tenants'")
    if settings.gitops.layout == "reference" and not settings.oci.registry:
        raise ConfigError(
            f"{path}: field 'gitops.layout': the reference layout names images "
            "oci://{image_repository}/{image_namespace}/{name}:{version}; set oci.registry "
            "(host[:port]) too"
        )


@dataclass
class Workspace:
    """A workspace root with its settings; paths are resolved against the root."""

    root: Path
    settings: Settings

    @classmethod
    def load(cls, root: Path | str | None = None) -> Workspace:
        """Find the workspace at or above `root` (default: the current folder) and load it."""
        start = Path(root or os.getcwd()).resolve()
        for candidate in (start, *start.parents):
            if (candidate / CONFIG_FILE).exists():
                return cls(candidate, load_settings(candidate / CONFIG_FILE))
        raise ConfigError(
            f"no {CONFIG_FILE} found in {start} or its parents; run `mw init {start}` first"
        )

    def path(self, value: str) -> Path:
        """Resolve a configured path against the workspace root."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.root / p

    def contains(self, path: Path) -> bool:
        """True when `path` resolves (symlinks followed) inside the workspace root."""
        return path.resolve().is_relative_to(self.root.resolve())

    def show(self, path: Path) -> str:
        """`path` relative to the root (POSIX) when it is inside, else as given."""
        if not self.contains(path):
            return str(path)
        return path.resolve().relative_to(self.root.resolve()).as_posix()

    @cached_property
    def state_dir(self) -> Path:
        return self.path(self.settings.state_dir)

    @property
    def models_dir(self) -> Path:
        return self.path(self.settings.paths.models)

    @property
    def pipelines_dir(self) -> Path:
        return self.path(self.settings.paths.pipelines)

    @property
    def data_dir(self) -> Path:
        return self.path(self.settings.paths.data)

    @property
    def deploy_repo(self) -> Path:
        from modelworks._deployrepo import open_repo

        return open_repo(self)

    @property
    def cache_dir(self) -> Path:
        return self.path(self.settings.data.cache)

    @property
    def oci_dir(self) -> Path:
        return self.path(self.settings.oci.store)

    @property
    def registry_url(self) -> str:
        return self.settings.registry.url or f"sqlite:///{self.state_dir / 'registry.db'}"

    @property
    def workers(self) -> int:
        return self.settings.executor.workers or (os.cpu_count() or 1)
