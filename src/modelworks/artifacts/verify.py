"""Verify a registered version end to end, and the audit log against its signed head.

``verify_version`` is what ``mw verify MODEL[@VERSION]`` runs, in the order a loader needs:

1. registry  the version exists, is registered, passed its scan; the deploy configs that
             serve it name the digest the registry recorded
2. digests   manifest, config and layer blobs re-hashed (``OCIStore.verify``); the
             manifest's annotations name this model, version and fingerprint
3. signature the extracted folder matches model.sig under the workspace public key (or a
             key retired by ``mw keys rotate``)
4. metrics   the registry's metrics are the signed metrics.json (gates and deltas use them)
5. sbom      sbom.json is a valid CycloneDX document
6. scan      the extracted files are scanned again at the workspace threshold
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from sqlalchemy import func, select

from modelworks.errors import (
    ArtifactError,
    ConfigError,
    ModelworksError,
    NotFoundError,
    VerificationError,
    did_you_mean,
)

if TYPE_CHECKING:
    from modelworks.artifacts.oci import OCIStore
    from modelworks.gitops.deploy import DeployConfig
    from modelworks.registry.models import ModelVersion
    from modelworks.registry.store import Store
    from modelworks.security.audit import ChainProblem
    from modelworks.workspace import Workspace


def verify_version(
    ws: Workspace, store: Store, model: str, version: str | None = None, *, env: str | None = None
) -> dict[str, Any]:
    """Check a version's registry record, blobs, signature, SBOM and scan; return what was checked.

    Args:
        model: the model name.
        version: a version id, an artifact digest ('sha256:…'), or None for the version
            deployed in `env`.
        env: the environment whose deployed version is the default; None means test if
            the model is deployed there, else the latest registered version.

    Returns:
        A dict with model, version, digest, deployments and one entry per check.
    """
    if env is not None and env not in ws.settings.environments:
        known = ", ".join(ws.settings.environments)
        raise ConfigError(f"environment {env!r} is not configured (environments: {known})")
    row, digest, deployed = _resolve(ws, store, model, version, env)
    name = f"{model}@{row['version'] if row else digest}"
    try:
        checks = _check_artifact(ws, model, row, digest)
    except (ArtifactError, ConfigError, NotFoundError) as exc:
        raise type(exc)(f"{name}: {exc}") from exc
    version_id = row["version"] if row else checks["annotations"]["version"]
    return {
        "model": model,
        "version": version_id,
        "digest": digest,
        "verified": True,
        "deployed": deployed,
        "checks": checks,
    }


def verify_signature(ws: Workspace, model_dir: Path) -> dict[str, Any]:
    """Verify model.sig with the current public key, then the retired ones; return the key used."""
    from modelworks.artifacts.sign import verify_dir
    from modelworks.security.keys import fingerprint, trusted_public_keys

    keys = trusted_public_keys(ws)
    if not keys:
        _refuse_revoked(ws, model_dir)
        raise VerificationError(f"{model_dir}: every signing key is revoked; run `mw keys rotate`")
    first: VerificationError | None = None
    for key in keys:
        try:
            verify_dir(model_dir, key)
        except VerificationError as exc:
            if "signed with another key" not in str(exc):
                raise  # right key, wrong content: the most useful message there is
            first = first or exc
            continue
        return {"key": ws.show(key), "fingerprint": fingerprint(key), "retired": key != keys[0]}
    _refuse_revoked(ws, model_dir)
    tried = f" (also tried {len(keys) - 1} retired key(s))" if len(keys) > 1 else ""
    raise VerificationError(f"{first}{tried}")


def _refuse_revoked(ws: Workspace, model_dir: Path) -> None:
    """VerificationError naming the revoked key when one of them signed `model_dir`."""
    from modelworks.artifacts.sign import verify_dir
    from modelworks.security.keys import fingerprint, revoked_public_keys
    from modelworks.security.revoked import key_id

    for key in revoked_public_keys(ws):
        try:
            verify_dir(model_dir, key)
        except VerificationError:
            continue
        raise VerificationError(
            f"{model_dir}: signed by revoked key {key_id(fingerprint(key))} ({ws.show(key)}); "
            "re-sign or retrain"
        )


# -- resolving what to verify -------------------------------------------------------


def _resolve(
    ws: Workspace, store: Store, model: str, version: str | None, env: str | None
) -> tuple[dict[str, Any] | None, str, dict[str, dict[str, str]]]:
    from modelworks.registry.queries import resolve_model

    model = resolve_model(store, model)  # `churn` may mean the one tenant's acme/churn
    rows = _versions(store, model)
    deployed = _deployed(ws, model)
    if version and version.startswith("sha256:"):
        row = next((r for r in rows if r["digest"] == version), None)
        return row, version, deployed
    if not version and env is not None and env not in deployed:
        raise NotFoundError(f"model {model!r} is not deployed in {env}")
    wanted = version or (deployed.get(env or "test") or {}).get("version")
    if wanted:
        row = next((r for r in rows if r["version"] == wanted), None)
        if row is None:
            hint = did_you_mean(wanted, [r["version"] for r in rows])
            raise NotFoundError(f"model {model!r} has no version {wanted!r}.{hint}")
    else:
        row = next((r for r in rows if r["status"] == "registered"), None)
        if row is None:
            raise NotFoundError(f"model {model!r} has no registered version to verify")
    return row, _registry_digest(model, row, deployed), deployed


def _versions(store: Store, model: str) -> list[dict[str, Any]]:
    from modelworks.registry.queries import get_model, model_versions

    with store.session() as s:
        return [_row(v) for v in model_versions(s, get_model(s, model).id)]


def _row(v: ModelVersion) -> dict[str, Any]:
    return {
        "version": v.version,
        "status": v.status,
        "reason": v.reason,
        "digest": v.artifact_digest,
        "fingerprint": v.fingerprint,
        "scan": v.scan,
        "signed": v.signed,
        "metrics": v.metrics,
    }


def _deployed(ws: Workspace, model: str) -> dict[str, dict[str, str]]:
    from modelworks._deployrepo import REFERENCE, layout_of
    from modelworks.gitops.deploy import config_path, read_worktree_configs

    found = {}
    layout = layout_of(ws.deploy_repo)
    for env in ws.settings.environments:
        path = ws.deploy_repo / config_path(env, model, layout=layout)
        if not path.is_file():
            continue
        if layout == REFERENCE:  # the digest is resolved through the registry
            for c in read_worktree_configs(ws.deploy_repo, env, [model]).values():
                found[env] = {"version": c.version, "digest": c.artifact_digest}
                found[env]["config"] = ws.show(path)
            continue
        try:
            cfg = yaml.safe_load(path.read_text())
            found[env] = {
                "version": str(cfg["version"]),
                "digest": str(cfg["artifact_digest"]),
                "config": ws.show(path),
            }
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{path}: not a readable deploy config ({type(exc).__name__}: {exc})"
            ) from None
    return found


def _registry_digest(model: str, row: dict[str, Any], deployed: dict[str, dict[str, str]]) -> str:
    where = f"{model}@{row['version']}"
    if row["status"] != "registered":
        reason = f": {row['reason']}" if row["reason"] else ""
        raise VerificationError(
            f"{where} is {row['status']}, not registered{reason}; it has no artifact"
        )
    if not row["digest"]:
        raise VerificationError(f"{where}: the registry has no artifact digest for it")
    for _env, d in sorted(deployed.items()):
        if d["version"] == row["version"] and d["digest"] != row["digest"]:
            raise VerificationError(
                f"{where}: {d['config']} serves digest {d['digest']} but the registry recorded "
                f"{row['digest']}: one of them was changed outside the line"
            )
    return str(row["digest"])


# -- checking the artifact ----------------------------------------------------------


def _check_artifact(
    ws: Workspace, model: str, row: dict[str, Any] | None, digest: str
) -> dict[str, Any]:
    from modelworks.artifacts.oci import OCIStore

    checks: dict[str, Any] = {"registry": _check_record(row)}
    store = OCIStore(ws.oci_dir)
    store.verify(digest)
    manifest = store.manifest(digest)
    checks["digests"] = {"blobs": 2 + len(manifest["layers"]), "manifest": digest}
    checks["annotations"] = _check_annotations(manifest, model, row)
    with tempfile.TemporaryDirectory(prefix="verify-", dir=_tmp_root(ws)) as tmp:
        model_dir = _extract(store, digest, Path(tmp) / "model")
        checks["files"] = sorted(
            p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()
        )
        checks["signature"] = verify_signature(ws, model_dir)
        checks["metrics"] = _check_metrics(model_dir, row)
        checks["sbom"] = _check_sbom(model_dir)
        checks["scan"] = _rescan(ws, model_dir)
    return checks


def _check_record(row: dict[str, Any] | None) -> dict[str, Any]:
    if row is None:
        return {"registered": False}
    scan = row["scan"]
    if not isinstance(scan, dict) or not isinstance(scan.get("safe"), bool):
        raise VerificationError(
            f"the registry's scan result {scan!r:.200} is missing or unknown; "
            "expected {'safe': true|false, …}"
        )
    if not scan["safe"]:
        raise VerificationError(
            f"the registry records an unsafe scan: {scan.get('findings')!r:.300}"
        )
    if not row["signed"]:
        raise VerificationError("the registry records this version as unsigned")
    return {"registered": True, "scan_safe": True, "signed": True}


def _check_annotations(
    manifest: dict[str, Any], model: str, row: dict[str, Any] | None
) -> dict[str, str]:
    notes = manifest.get("annotations") or {}
    found = {
        "model": notes.get("dev.modelworks.model"),
        "version": notes.get("org.opencontainers.image.version"),
        "fingerprint": notes.get("dev.modelworks.fingerprint"),
    }
    expected = {"model": model}
    if row is not None:
        expected |= {"version": row["version"], "fingerprint": row["fingerprint"]}
    for key, value in expected.items():
        if found[key] != value:
            raise VerificationError(
                f"the manifest's annotations say {key} {found[key]!r}, expected {value!r}: "
                "this artifact belongs to something else"
            )
    return {k: str(v) for k, v in found.items()}


def signed_metrics(model_dir: Path) -> dict[str, Any]:
    """The metrics the artifact was signed with (models/metrics.json); {} when it has none."""
    path = model_dir / "metrics.json"
    if not path.is_file():
        return {}
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerificationError(f"the artifact's metrics.json is not JSON: {exc}") from None
    if not isinstance(loaded, dict):
        raise VerificationError("the artifact's metrics.json is not a JSON object")
    return loaded


def metric_differences(signed: dict[str, Any], recorded: dict[str, Any]) -> list[str]:
    """Each metric on which the registry row and the signed artifact disagree, as a sentence."""
    out = []
    for key in sorted(set(signed) | set(recorded)):
        a, b = signed.get(key), recorded.get(key)
        if not _same(a, b):
            out.append(f"{key}: the registry says {b!r}, the signed artifact {a!r}")
    return out


def signed_baseline(ws: Workspace, cfg: DeployConfig) -> dict[str, Any]:
    """The metrics a deployed artifact was signed with: a no_regression gate's baseline comes
    from the artifact the deploy config (in Git) pins by digest, never from the registry's
    editable row."""
    from modelworks.artifacts.oci import OCIStore

    where = f"{cfg.name}@{cfg.version} ({cfg.artifact_digest})"
    try:
        metrics = json.loads(OCIStore(ws.oci_dir).read_file(cfg.artifact_digest, "metrics.json"))
    except (ModelworksError, ValueError) as exc:
        raise VerificationError(
            f"{where}: cannot read the deployed artifact's signed metrics for a no_regression "
            f"gate: {exc} (`mw fsck` reports why)"
        ) from None
    if not isinstance(metrics, dict):
        raise VerificationError(f"{where}: the artifact's metrics.json is not a JSON object")
    return metrics


def _same(a: Any, b: Any) -> bool:
    numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
    return math.isclose(a, b, rel_tol=1e-12) if numbers else bool(a == b)


def _check_metrics(model_dir: Path, row: dict[str, Any] | None) -> dict[str, Any]:
    """The registry's metrics must be the signed ones: they drive gates and promotion deltas."""
    signed = signed_metrics(model_dir)
    if row is None:
        return {"signed": len(signed)}
    differences = metric_differences(signed, row.get("metrics") or {})
    if differences:
        raise VerificationError(
            "the registry's metrics differ from the signed artifact's (the registry row was "
            "changed after training; `mw fsck --repair` rebuilds it): " + "; ".join(differences)
        )
    return {"signed": len(signed), "registry_matches": True}


def _tmp_root(ws: Workspace) -> Path:
    root = ws.state_dir / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _extract(store: OCIStore, digest: str, dest: Path) -> Path:
    try:
        return store.extract(digest, dest)
    except OSError as exc:
        raise ArtifactError(f"cannot extract {digest}: {exc}") from None


def _check_sbom(model_dir: Path) -> dict[str, Any]:
    from modelworks.artifacts.sbom import sbom_summary, validate_sbom

    path = model_dir / "sbom.json"
    if not path.is_file():
        raise VerificationError("the artifact has no sbom.json")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationError(f"sbom.json is not valid JSON: {exc}") from None
    try:
        validate_sbom(doc)
    except ConfigError:
        raise
    except ArtifactError as exc:
        raise VerificationError(f"sbom.json is invalid: {exc}") from None
    return sbom_summary(doc)


def _rescan(ws: Workspace, model_dir: Path) -> dict[str, Any]:
    from modelworks.artifacts.scan import Limits, scan_dir

    limits = Limits(**ws.settings.scan.limits())
    result = scan_dir(model_dir, threshold=ws.settings.scan.severity, limits=limits)
    if not result.safe:
        problems = [
            f"{f.file}: {f.severity} {f.description}" for f in result.findings
        ] + result.errors
        raise VerificationError(f"model files are not verified safe: {'; '.join(problems)[:500]}")
    return {"safe": True, "threshold": ws.settings.scan.severity, "scanners": result.scanners}


# -- the audit log ------------------------------------------------------------------


def verify_audit(
    ws: Workspace,
    store: Store,
    *,
    checkpoint: bool = True,
    accept_head: bool = False,
    actor: str = "modelworks",
) -> dict[str, Any]:
    """Check the audit chain, and its head against the signed anchors (security/anchor.py).

    An intact log is anchored at its head (``checkpoint``). ``accept_head`` overrides the
    anchors' objections (a new checkout, a restored backup, a revoked key), never a broken
    chain: the current head is anchored afresh and the override is audited and committed.
    """
    from modelworks.registry import audit
    from modelworks.registry.models import AuditEvent
    from modelworks.security import anchor
    from modelworks.security.audit import ChainProblem

    problems = audit.verify(store)
    with store.session() as s:
        count = s.scalar(select(func.count()).select_from(AuditEvent)) or 0
        tail = s.execute(
            select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
        ).first()

        def hash_at(seq: int) -> str | None:
            return s.scalar(select(AuditEvent.hash).where(AuditEvent.seq == seq))

        found, anchors = anchor.check(ws, tail[0] if tail else 0, hash_at)
    accepted = found if accept_head and not problems else []
    if not accepted:
        problems += [ChainProblem(p.seq, p.kind, p.detail) for p in found]
    problems = _dedupe(problems)
    settled = None
    if (checkpoint or accepted) and not problems and tail is not None:
        settled = anchor.settle(ws, tail[0], tail[1], force=bool(accepted))
    if accepted and tail is not None:
        overridden = [p.detail for p in accepted]
        audit.record(
            store,
            [
                audit.event(
                    "audit.head-accepted",
                    "audit-log",
                    actor=actor,
                    before={"problems": overridden},
                    after={
                        "seq": tail[0],
                        "hash": tail[1],
                        "commit": (settled or {}).get("commit"),
                    },
                )
            ],
        )
    return {
        "intact": not problems,
        "events": count,
        "problems": [{"seq": p.seq, "kind": p.kind, "detail": p.detail} for p in problems],
        "anchors": anchors,
        "anchored": settled,
        "accepted": [p.detail for p in accepted],
    }


def _dedupe(problems: list[ChainProblem]) -> list[ChainProblem]:
    seen: set[tuple[int, str]] = set()
    out = []
    for p in sorted(problems, key=lambda p: p.seq):
        if (p.seq, p.kind) not in seen:
            seen.add((p.seq, p.kind))
            out.append(p)
    return out
