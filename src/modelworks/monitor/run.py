"""The monitoring pass: served inputs from the prediction log against each model's training
profile, per environment.

For every model deployed in ENV (at the deploy repo's HEAD) the pass reads the newest
`window` logged rows of the version being served, computes PSI and a KS test per feature
(`drift_report`), and stores a drift report in the registry. The spec's `monitoring`
section decides the threshold, the minimum sample size and the action; without one the
defaults apply (PSI 0.2, 100 samples, action alert). When a drifted model's action is
`retrain`, the report carries `retrain_requested` (once per served version): the
controller picks it up and retrains on the newest data. The latest score per model is
also written to `.mw/monitor/<env>.json`, which the inference server exports as gauges.
A model with no logged traffic gets no report (there is nothing to compare).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from modelworks.errors import ConfigError, ModelworksError, NotFoundError
from modelworks.registry import audit
from modelworks.registry.models import DriftReportRow, Model
from modelworks.registry.tenants import tenants as all_tenants
from modelworks.spec import Monitoring, load_specs
from modelworks.tenancy.names import qualified

if TYPE_CHECKING:
    from modelworks.gitops.deploy import DeployConfig
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

DEFAULT = Monitoring.model_validate({})


@dataclass
class ModelDrift:
    """The outcome of monitoring one served model."""

    model: str
    env: str
    version: str
    score: float = 0.0
    drifted: bool = False
    samples: int = 0
    threshold: float = DEFAULT.threshold
    min_samples: int = DEFAULT.min_samples
    action: str = DEFAULT.action
    retrain_requested: bool = False
    reason: str | None = None
    error: str | None = None
    report_id: int | None = None
    features: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


def predictions_root(ws: Workspace, env: str) -> Path:
    """Where the inference server of `env` logs served inputs."""
    return ws.state_dir / "predictions" / env


def scores_path(ws: Workspace, env: str) -> Path:
    """The latest drift score per model of `env`, read by the server's /metrics."""
    return ws.state_dir / "monitor" / f"{env}.json"


def read_scores(path: Path) -> dict[str, dict[str, Any]]:
    """The scores file as {model: {version, score, drifted, samples, at}}; {} when absent."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def monitor(
    ws: Workspace,
    store: Store,
    env: str,
    names: list[str] | None = None,
    *,
    window: int = 10_000,
    since: datetime | None = None,
    record: bool = True,
    actor: str = "monitor",
    tenants: frozenset[str] | None = None,
) -> list[ModelDrift]:
    """Check every model served in `env` (or the named ones) for drift; store the reports.

    With `tenants` (the caller's visible tenants; None: all) only their models are checked;
    another tenant's is as not deployed."""
    from modelworks.gitops.deploy import read_env

    if env not in ws.settings.environments:
        raise ConfigError(
            f"environment '{env}' is not in modelworks.yaml "
            f"(environments: {', '.join(ws.settings.environments)})"
        )
    configs = read_env(ws.deploy_repo, env) if _has_commit(ws) else {}
    if tenants is not None:
        configs = {n: c for n, c in configs.items() if (c.tenant or "default") in tenants}
    if names:
        unknown = sorted(set(names) - set(configs))
        if unknown:
            raise NotFoundError(
                f"not deployed in {env}: {', '.join(unknown)} "
                f"(deployed: {', '.join(sorted(configs)) or 'none'})"
            )
        configs = {n: configs[n] for n in names}
    settings = {
        i.qualified: i.spec.monitoring or DEFAULT
        for i in load_specs(ws.models_dir, tenants=all_tenants(ws, store))
        if i.spec is not None
    }
    profiles = ProfileCache(ws)
    results = [
        _one(ws, env, cfg, settings.get(name, DEFAULT), profiles, window, since)
        for name, cfg in sorted(configs.items())
    ]
    if record:
        _record(store, results, actor)
        _write_scores(ws, env, results)
    return results


def _has_commit(ws: Workspace) -> bool:
    from modelworks import _git

    return ws.deploy_repo.is_dir() and _git.head(ws.deploy_repo) is not None


def _one(
    ws: Workspace,
    env: str,
    cfg: DeployConfig,
    m: Monitoring,
    profiles: ProfileCache,
    window: int,
    since: datetime | None,
) -> ModelDrift:
    from modelworks.monitor.drift import drift_report
    from modelworks.monitor.predlog import read_log

    out = ModelDrift(
        cfg.qualified,
        env,
        cfg.version,
        threshold=m.threshold,
        min_samples=m.min_samples,
        action=m.action,
    )
    try:
        profile = profiles.get(cfg.artifact_digest)
        X, _names, _info = read_log(
            predictions_root(ws, env), cfg.qualified, since=since, version=cfg.version, limit=window
        )
        rep = drift_report(profile, X, psi_threshold=m.threshold, min_samples=m.min_samples)
    except ModelworksError as exc:
        out.error = str(exc)
        return out
    out.score, out.drifted, out.samples, out.reason = rep.score, rep.drifted, rep.n, rep.reason
    out.features = [asdict(f) for f in rep.features]
    return out


class ProfileCache:
    """Training profiles by artifact digest, kept under .mw/monitor/profiles once read."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.folder = ws.state_dir / "monitor" / "profiles"
        self.memory: dict[str, dict[str, Any]] = {}

    def get(self, digest: str) -> dict[str, Any]:
        """The profile.json of the ModelCar with this digest."""
        if digest in self.memory:
            return self.memory[digest]
        path = self.folder / f"{digest.replace(':', '-')}.json"
        profile: dict[str, Any]
        if path.exists():
            profile = json.loads(path.read_text())
        else:
            from modelworks.artifacts.oci import OCIStore

            profile = json.loads(OCIStore(self.ws.oci_dir).read_file(digest, "profile.json"))
            _atomic_write(path, json.dumps(profile))
        self.memory[digest] = profile
        return profile


def _record(store: Store, results: list[ModelDrift], actor: str) -> None:
    """Add a drift report per checked model; mark a first retrain request per served version."""
    now = datetime.now(UTC)
    events: list[Mapping[str, Any]] = []
    with store.session() as s:
        rows = s.execute(select(Model.tenant, Model.name, Model.id)).tuples().all()
        ids = {qualified(t, n): i for t, n, i in rows}
        asked = _already_requested(s, results)
        for r in results:
            if r.model not in ids or r.error is not None or r.samples == 0:
                continue  # no served traffic: nothing to report
            want = r.drifted and r.action == "retrain"
            r.retrain_requested = want and (r.model, r.env, r.version) not in asked
            row = DriftReportRow(
                model_id=ids[r.model],
                env=r.env,
                version=r.version,
                score=r.score,
                drifted=r.drifted,
                samples=r.samples,
                action=r.action if r.drifted else None,
                report={
                    "features": r.features,
                    "threshold": r.threshold,
                    "min_samples": r.min_samples,
                    "reason": r.reason,
                    "retrain_requested": r.retrain_requested,
                },
                created_at=now,
            )
            s.add(row)
            s.flush()
            r.report_id = row.id
            if r.drifted:
                events.append(
                    audit.event(
                        "drift.detected",
                        r.model,
                        actor=actor,
                        after={
                            "env": r.env,
                            "version": r.version,
                            "score": round(r.score, 4),
                            "samples": r.samples,
                            "action": r.action,
                            "report": row.id,
                        },
                    )
                )
    audit.record(store, events)


def _already_requested(s: Any, results: list[ModelDrift]) -> set[tuple[str, str, str]]:
    rows = s.execute(
        select(
            Model.tenant,
            Model.name,
            DriftReportRow.env,
            DriftReportRow.version,
            DriftReportRow.report,
        )
        .join(Model)
        .where(DriftReportRow.drifted.is_(True), DriftReportRow.action == "retrain")
    )
    return {
        (qualified(t, n), e, v) for t, n, e, v, rep in rows if (rep or {}).get("retrain_requested")
    }


def retrain_requests(store: Store, after_id: int) -> tuple[list[dict[str, Any]], int]:
    """Drift reports newer than `after_id` that ask for a retrain, and the newest report id."""
    from sqlalchemy import func

    with store.session() as s:
        top = s.scalar(select(func.max(DriftReportRow.id))) or after_id
        rows = s.execute(
            select(DriftReportRow, Model.tenant, Model.name)
            .join(Model)
            .where(
                DriftReportRow.id > after_id,
                DriftReportRow.drifted.is_(True),
                DriftReportRow.action == "retrain",
            )
        ).all()
    found = [
        {
            "model": qualified(tenant, name),
            "env": r.env,
            "version": r.version,
            "score": r.score,
            "report": r.id,
        }
        for r, tenant, name in rows
        if (r.report or {}).get("retrain_requested")
    ]
    return found, max(top, after_id)


def _write_scores(ws: Workspace, env: str, results: list[ModelDrift]) -> None:
    path = scores_path(ws, env)
    scores = read_scores(path)
    at = datetime.now(UTC).isoformat()
    for r in results:
        if r.error is None and r.samples:
            scores[r.model] = {
                "version": r.version,
                "score": r.score,
                "drifted": r.drifted,
                "samples": r.samples,
                "at": at,
            }
    _atomic_write(path, json.dumps(scores, sort_keys=True))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
