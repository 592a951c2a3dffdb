"""Desired state from the deploy repo: what changed between Git and the models the server knows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelworks import _git
from modelworks.errors import GitError, ModelworksError
from modelworks.gitops.deploy import DeployConfig, list_env
from modelworks.tenancy.access import DEFAULT_TENANT
from modelworks.tenancy.names import qualified

ModelKey = tuple[str, str]  # (tenant, model name): two tenants may each serve a `churn`


def model_key(cfg: DeployConfig) -> ModelKey:
    """The (tenant, name) a deploy config is served under."""
    return cfg.tenant or DEFAULT_TENANT, cfg.name


@dataclass
class ModelEntry:
    """One deployed model: the version Git wants, and the last version that loaded."""

    name: str
    desired: DeployConfig
    good: DeployConfig | None = None
    tenant: str = DEFAULT_TENANT

    @property
    def key(self) -> ModelKey:
        return self.tenant, self.name

    @property
    def label(self) -> str:
        """The qualified name (`acme/churn`; bare for the default tenant) shown in answers."""
        return qualified(self.tenant, self.name)


@dataclass
class ReconcileResult:
    """What one reconcile changed; the JSON answer of POST /admin/reconcile."""

    commit: str | None = None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[dict[str, str]] = field(default_factory=list)
    unchanged: int = 0
    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return {
            "commit": self.commit,
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "loaded": self.loaded,
            "failed": self.failed,
            "error": self.error,
        }


def tenant_of(name: str) -> str:
    """The tenant of a qualified name: `acme/churn` -> acme, `churn` -> the default tenant."""
    owner, sep, _ = name.rpartition("/")
    return owner if sep and owner else DEFAULT_TENANT


def visible_result(body: dict[str, Any], tenants: frozenset[str] | None) -> dict[str, Any]:
    """A reconcile answer (`ReconcileResult.to_json`) naming only the `tenants`' models."""
    if tenants is None:
        return body

    def seen(name: str) -> bool:
        return tenant_of(name) in tenants

    return {
        **body,
        "added": [n for n in body["added"] if seen(n)],
        "removed": [n for n in body["removed"] if seen(n)],
        "changed": [c for c in body["changed"] if seen(c["name"])],
        "loaded": [n for n in body["loaded"] if seen(n)],
        "failed": {n: e for n, e in body["failed"].items() if seen(n)},
    }


def resolve_ref(repo: Path, ref: str) -> str:
    """The commit `ref` names now (a branch is re-resolved on every call)."""
    sha = _git.head(repo, ref) if repo.is_dir() else None
    if sha is not None:
        return sha
    if not repo.is_dir() or not _git.git(repo, "rev-parse", "--git-dir", check=False).strip():
        raise GitError(
            f"deploy repo {repo} is not a git repository (set paths.deploy in modelworks.yaml)"
        )
    raise GitError(f"deploy repo {repo}: ref '{ref}' does not name a commit")


def read_desired(repo: Path, env: str, commit: str) -> dict[str, DeployConfig]:
    """The env's deploy configs at `commit` by qualified name (every tenant's), with a clear
    error on a bad config."""
    try:
        return {qualified(c.tenant, c.name): c for c in list_env(repo, env, commit)}
    except ModelworksError:
        raise
    except Exception as exc:  # pydantic/yaml errors from a hand-edited config
        raise GitError(
            f"deploy repo {repo}: cannot read the {env} configs at {commit[:12]}: {exc}"
        ) from None


def apply_desired(
    entries: dict[ModelKey, ModelEntry],
    configs: dict[str, DeployConfig],
    result: ReconcileResult,
) -> list[tuple[ModelEntry, DeployConfig]]:
    """Update `entries` in place to match `configs` (keyed by (tenant, name), whatever the keys
    of `configs`); return (entry, previous config) per change. Result names are qualified."""
    wanted = {model_key(cfg): cfg for cfg in configs.values()}
    for key in [k for k in entries if k not in wanted]:
        del entries[key]
        result.removed.append(qualified(*key))
    changes: list[tuple[ModelEntry, DeployConfig]] = []
    for key, cfg in wanted.items():
        entry = entries.get(key)
        name = qualified(*key)
        if entry is None:
            entries[key] = ModelEntry(cfg.name, cfg, tenant=key[0])
            result.added.append(name)
        elif (entry.desired.artifact_digest, entry.desired.runtime) != (
            cfg.artifact_digest,
            cfg.runtime,
        ):
            changes.append((entry, entry.desired))
            result.changed.append({"name": name, "from": entry.desired.version, "to": cfg.version})
            entry.desired = cfg
        else:
            entry.desired = cfg
            result.unchanged += 1
    return changes


def referenced_digests(entries: dict[ModelKey, ModelEntry]) -> set[str]:
    """Digests some entry still wants or still falls back to."""
    refs = {e.desired.artifact_digest for e in entries.values()}
    refs.update(e.good.artifact_digest for e in entries.values() if e.good is not None)
    return refs
