"""Approval attestations: proof that a gated environment's config came through an approval.

When the line merges an approved promotion (or makes a rollback) into an environment that
needs approvals, it writes beside each config a signed statement::

    deploy/prod/<model>/approval.json
    {"format": "modelworks.approval/v1", "env": "prod", "model": "<model>",
     "version": "...", "artifact_digest": "sha256:...",
     "config_sha256": "<sha256 hex of the exact config.yaml bytes>",
     "kind": "promote" | "rollback", "promotion": <request id>,
     "requested_by": "alice", "approvers": ["bob"], "actor": "bob", "at": "<iso time>",
     "key": "sha256:<public key fingerprint>", "signature": "<base64 ECDSA P-256 SHA-256>"}

The signature covers the canonical JSON (sorted keys, no spaces) of every other field and
is made with the workspace signing key; it is checked against `trusted_public_keys(ws)`.
A config is accepted only when an attestation for its env, model and exact bytes verifies,
so a hand commit, a force-push or an edit of either file is refused, wherever it came from.
Whoever can read the private key (`.mw/`) can sign anything: that user is an admin.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from modelworks._deployrepo import MODELWORKS, REFERENCE, layout_of
from modelworks.errors import ConfigError, ModelworksError
from modelworks.gitops.deploy import (
    CONFIG_NAME,
    MODELWORKS_KEYS,
    DeployConfig,
    config_path,
    env_prefix,
)

if TYPE_CHECKING:
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

ATTESTATION_NAME = "approval.json"
FORMAT = "modelworks.approval/v1"
KINDS = ("promote", "rollback")
HISTORY_LIMIT = 500  # commits searched back for a model's last approved config


def attestation_path(env: str, model: str, layout: str = MODELWORKS) -> str:
    """The repo-relative path of a model's approval attestation in an environment (next
    to its config.yaml)."""
    return config_path(env, model, layout=layout).removesuffix(CONFIG_NAME) + ATTESTATION_NAME


def is_gated(ws: Workspace, env: str) -> bool:
    """True when promotions to `env` need approvals (so its configs need attestations)."""
    settings = ws.settings.environments.get(env)
    return settings is not None and settings.approvals > 0


def _canonical(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def sign_attestation(
    ws: Workspace,
    *,
    env: str,
    model: str,
    config_text: str,
    kind: str,
    promotion: int | None,
    requested_by: str | None,
    approvers: list[str],
    actor: str,
) -> str:
    """The approval.json text for `config_text`, signed with the workspace signing key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from modelworks.apply import signing_key
    from modelworks.security.keys import signing_keys

    private, public = signing_key(ws), signing_keys(ws)[1]  # made on first use, as apply does
    key, key_id = _signer(str(private), str(public), _stamp(private), _stamp(public))
    cfg = yaml.safe_load(config_text) or {}
    payload: dict[str, Any] = {
        "format": FORMAT,
        "env": env,
        "model": model,
        "version": str(cfg.get("version", "")),
        "artifact_digest": str(cfg.get("artifact_digest", "")),
        "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        "kind": kind,
        "promotion": promotion,
        "requested_by": requested_by,
        "approvers": sorted(approvers),
        "actor": actor,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "key": key_id,
    }
    signature = key.sign(_canonical(payload), ec.ECDSA(hashes.SHA256()))
    payload["signature"] = base64.b64encode(signature).decode()
    return json.dumps(payload, indent=2, sort_keys=True) + "\n"


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _signer(private: str, public: str, _p: tuple[int, int], _q: tuple[int, int]) -> tuple[Any, str]:
    """The loaded private key and the public key's fingerprint (cached per file version)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from modelworks.security.keys import fingerprint

    try:
        key = serialization.load_pem_private_key(Path(private).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"{private}: cannot sign approvals ({exc}); the signing key made by `mw apply` "
            "or `mw init` is needed to merge into a gated environment"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{private}: not an EC private key; cannot sign approvals")
    return key, fingerprint(Path(public))


class Verifier:
    """Checks attestations against the workspace's trusted public keys (loaded once)."""

    def __init__(self, ws: Workspace) -> None:
        from cryptography.hazmat.primitives import serialization

        from modelworks.security.keys import trusted_public_keys

        self.keys: list[Any] = []
        self.problem: str | None = None
        try:
            paths = trusted_public_keys(ws)
        except ModelworksError as exc:
            self.problem = str(exc)
            return
        for path in paths:
            try:
                self.keys.append(serialization.load_pem_public_key(Path(path).read_bytes()))
            except (OSError, ValueError, TypeError):
                continue  # an unreadable key verifies nothing; the others still can
        if not self.keys:
            self.problem = "no readable trusted public key to verify approvals with"

    def check(self, env: str, model: str, config: str | None, attestation: str | None) -> str:
        """'' when `attestation` proves `config` was approved for env/model, else why not."""
        if config is None:
            return "the config is missing"
        if attestation is None:
            return (
                f"no approval attestation ({ATTESTATION_NAME}) beside it (merged before "
                f"attestations existed? `mw attest --env {env}` adopts what the registry proves)"
            )
        if self.problem:
            return self.problem
        try:
            doc = json.loads(attestation)
        except ValueError:
            return f"{ATTESTATION_NAME} is not JSON"
        if not isinstance(doc, dict) or not isinstance(doc.get("signature"), str):
            return f"{ATTESTATION_NAME} has no signature"
        body = {k: v for k, v in doc.items() if k != "signature"}
        if not self._signed(body, doc["signature"]):
            return f"{ATTESTATION_NAME} is not signed by a trusted key"
        if doc.get("format") != FORMAT or doc.get("kind") not in KINDS:
            return f"{ATTESTATION_NAME} has an unknown format or kind"
        if (doc.get("env"), doc.get("model")) != (env, model):
            return f"{ATTESTATION_NAME} approves {doc.get('model')} in {doc.get('env')}, not here"
        if doc.get("config_sha256") != hashlib.sha256(config.encode()).hexdigest():
            return f"{CONFIG_NAME} is not the one its {ATTESTATION_NAME} approves (bytes differ)"
        return ""

    def _signed(self, body: dict[str, Any], signature: str) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            raw = base64.b64decode(signature, validate=True)
        except ValueError:
            return False
        for key in self.keys:
            try:
                key.verify(raw, _canonical(body), ec.ECDSA(hashes.SHA256()))
                return True
            except (InvalidSignature, TypeError, ValueError):
                continue
        return False


@dataclass
class Refusal:
    """A config of a gated environment that did not come through an approval."""

    model: str
    path: str
    commit: str  # the commit that last changed the refused file
    reason: str
    fallback: str | None = None  # the version served instead (None: the model is not served)

    def to_json(self) -> dict[str, Any]:
        """The refusal as a JSON-ready dict."""
        return {
            "model": self.model,
            "path": self.path,
            "commit": self.commit,
            "reason": self.reason,
            "fallback": self.fallback,
        }

    def message(self) -> str:
        """One line naming the file, the commit and what is served instead."""
        instead = (
            f"keeping the last approved version {self.fallback}"
            if self.fallback
            else "no approved version to keep, so it is not served"
        )
        return (
            f"{self.path} at commit {self.commit[:12]} is not approved: {self.reason}; "
            f"{instead}. Promote it with `mw promote` and approve it instead"
        )


@dataclass
class EnvCheck:
    """What a gated environment may serve at one commit, and what it refused."""

    commit: str
    configs: dict[str, DeployConfig] = field(default_factory=dict)
    refused: list[Refusal] = field(default_factory=list)


def approved_env(ws: Workspace, env: str, commit: str) -> EnvCheck:
    """The configs of `env` at `commit` that carry a valid attestation; the last approved
    config stands in for each one that does not (see `Refusal`). An ungated env's configs
    are all taken as they are."""
    from modelworks.gitops.deploy import read_env
    from modelworks.gitops.repo import read_blobs, tree_blobs

    repo = ws.deploy_repo
    if not is_gated(ws, env):
        return EnvCheck(commit, read_env(repo, env, commit))
    layout = layout_of(repo)
    prefix = env_prefix(env, layout)
    blobs = tree_blobs(repo, commit, prefix)
    models = sorted(
        {p[len(prefix) : -len(CONFIG_NAME) - 1] for p in blobs if p.endswith(f"/{CONFIG_NAME}")}
    )
    texts = read_blobs(repo, sorted(set(blobs.values())))
    verifier = Verifier(ws)
    result = EnvCheck(commit)
    for model in models:
        path = f"{prefix}{model}/{CONFIG_NAME}"
        config = texts.get(blobs[path])
        att_sha = blobs.get(attestation_path(env, model, layout))
        reason = verifier.check(env, model, config, texts.get(att_sha) if att_sha else None)
        cfg = _parse(config, model, layout) if not reason else None
        if cfg is not None:
            result.configs[model] = cfg
            continue
        refusal = Refusal(model, path, _last_change(repo, commit, path), reason or "unreadable")
        fallback = last_approved(ws, env, model, commit, verifier)
        if fallback is not None:
            result.configs[model] = fallback
            refusal.fallback = fallback.version
        result.refused.append(refusal)
    if layout == REFERENCE:
        from modelworks.gitops.reference import resolve_configs

        resolve_configs(repo, list(result.configs.values()))
    return result


def _parse(text: str | None, model: str, layout: str = MODELWORKS) -> DeployConfig | None:
    try:
        data = yaml.safe_load(text or "")
        if layout != REFERENCE and any(k not in data for k in MODELWORKS_KEYS):
            return None
        cfg = DeployConfig.model_validate(data)
    except Exception:  # a signed config is always valid; this guards a mis-signed one
        return None
    if layout == REFERENCE:  # the folder is <tenant>/<deployment>, the config has no tenant
        owner, _, folder = model.rpartition("/")
        cfg.tenant = owner or cfg.tenant
        return cfg if cfg.name == folder else None
    return cfg if cfg.name == model else None


def _last_change(repo: Path, commit: str, path: str) -> str:
    from modelworks.gitops.repo import run_git

    out = run_git(repo, "log", "--first-parent", "-1", "--format=%H", commit, "--", path)
    return out.strip() or commit


def last_approved(
    ws: Workspace, env: str, model: str, commit: str, verifier: Verifier | None = None
) -> DeployConfig | None:
    """The newest config of `model` in `env` at or before `commit` whose attestation verifies."""
    found = approved_history(ws, env, model, commit, verifier, limit=1)
    return found[0][1] if found else None


def approved_history(
    ws: Workspace,
    env: str,
    model: str,
    ref: str,
    verifier: Verifier | None = None,
    limit: int | None = None,
) -> list[tuple[str, DeployConfig]]:
    """(commit, config) for each first-parent commit where `model` was served approved."""
    from modelworks.gitops.repo import read_blobs, run_git

    verifier = verifier or Verifier(ws)
    repo = ws.deploy_repo
    layout = layout_of(repo)
    path, att = config_path(env, model, layout=layout), attestation_path(env, model, layout)
    out = run_git(
        repo, "log", "--first-parent", f"-n{HISTORY_LIMIT}", "--format=%H", ref, "--", path, att
    )
    commits = out.split()
    texts = read_blobs(repo, [f"{c}:{p}" for c in commits for p in (path, att)])
    found: list[tuple[str, DeployConfig]] = []
    for c in commits:
        config, attestation = texts.get(f"{c}:{path}"), texts.get(f"{c}:{att}")
        cfg = _parse(config, model, layout)
        if cfg is not None and not verifier.check(env, model, config, attestation):
            found.append((c, cfg))
            if limit is not None and len(found) >= limit:
                break
    return found


def record_refusals(ws: Workspace, env: str, refused: list[Refusal], *, actor: str) -> None:
    """Write one `config.refused` audit event per refusal (a registry problem is only logged)."""
    import logging

    from modelworks.registry import audit
    from modelworks.registry.store import Store

    events = [
        audit.event("config.refused", r.model, actor=actor, after={"env": env, **r.to_json()})
        for r in refused
    ]
    try:
        store = Store(ws.registry_url)
        try:
            audit.record(store, events)
        finally:
            store.close()
    except Exception as exc:  # serving must outlive a registry it cannot write
        logging.getLogger("modelworks.gitops").warning("could not audit refused configs: %s", exc)


def verify_env(ws: Workspace, store: Store, env: str, ref: str = "HEAD") -> dict[str, Any]:
    """Check every config of `env` at `ref`: its approval (gated envs) and its artifact.

    Returns {"env", "commit", "gated", "models": [{model, path, version, ok, problem}],
    "refused": [Refusal.to_json()...], "ok"}; the caller decides how to fail.
    """
    from modelworks.artifacts.verify import verify_version
    from modelworks.gitops.deploy import read_env
    from modelworks.gitops.repo import run_git

    if env not in ws.settings.environments:
        raise ConfigError(
            f"environment {env!r} is not in modelworks.yaml (environments: "
            f"{', '.join(ws.settings.environments)})"
        )
    commit = run_git(ws.deploy_repo, "rev-parse", "--verify", f"{ref}^{{commit}}").strip()
    gated = is_gated(ws, env)
    if gated:
        check = approved_env(ws, env, commit)
        refused = {r.model: r for r in check.refused}
        configs = {m: c for m, c in check.configs.items() if m not in refused}
    else:
        refused, configs = {}, read_env(ws.deploy_repo, env, commit)
    models: list[dict[str, Any]] = [
        {"model": r.model, "path": r.path, "version": None, "ok": False, "problem": r.message()}
        for r in refused.values()
    ]
    for name, cfg in sorted(configs.items()):
        path = config_path(env, name, layout=layout_of(ws.deploy_repo))
        row: dict[str, Any] = {"model": name, "path": path}
        try:
            verify_version(ws, store, name, cfg.version)
            row.update(version=cfg.version, ok=True, problem=None)
        except ModelworksError as exc:
            row.update(version=cfg.version, ok=False, problem=str(exc))
        models.append(row)
    return {
        "env": env,
        "commit": commit,
        "gated": gated,
        "models": sorted(models, key=lambda m: str(m["model"])),
        "refused": [r.to_json() for r in refused.values()],
        "ok": all(m["ok"] for m in models),
    }
