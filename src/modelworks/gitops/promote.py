"""Opening promotion requests: a branch `promote/<id>` in the deploy repo plus a registry record.

`promote` copies what the source env (test) serves into `deploy/<env>/<model>/config.yaml`
of the target env (prod) on a new branch, built with git plumbing in a temporary index
so the user's checkout is never touched, and records a PromotionRequest with a table of
metric deltas. Deciding requests (approve, reject, the merge) lives in `gitops.approve`,
the records in `gitops.records` and the git plumbing in `gitops.repo`; their public names
stay importable from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from modelworks import _git
from modelworks._deployrepo import REFERENCE, deployment_name, layout_of
from modelworks.errors import ConfigError, ConflictError, DeployError, NotFoundError, did_you_mean
from modelworks.gitops.approve import _finish, approve, check_mergeable, reject
from modelworks.gitops.deploy import config_path
from modelworks.gitops.records import (
    STATES,
    _lock,
    get_promotion,
    list_promotions,
    provider_for,
    request_dict,
)
from modelworks.gitops.repo import (
    ZERO_SHA,
    RepoState,
    advance,
    commit_files,
    dirty_paths,
    env_blobs,
    merge_branch,
    read_blobs,
    repo_state,
    run_git,
    switch_worktree,
    tree_blobs,
    update_ref,
    version_of,
    write_blob,
)
from modelworks.registry import audit
from modelworks.registry.models import Model, ModelVersion, PromotionRequest
from modelworks.registry.tenants import approvals_required
from modelworks.tenancy.access import DEFAULT_TENANT
from modelworks.tenancy.names import model_key, qualified, resolve_ref

if TYPE_CHECKING:
    from modelworks.gitops.forge import ForgeProvider
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

__all__ = [
    "STATES",
    "ZERO_SHA",
    "RepoState",
    "advance",
    "approve",
    "check_mergeable",
    "commit_files",
    "delta_table",
    "deltas",
    "dirty_paths",
    "env_blobs",
    "format_deltas",
    "get_promotion",
    "list_promotions",
    "merge_branch",
    "parse_labels",
    "promote",
    "provider_for",
    "read_blobs",
    "reject",
    "repo_state",
    "request_dict",
    "run_git",
    "switch_worktree",
    "tree_blobs",
    "update_ref",
    "version_of",
    "write_blob",
]

BODY_ROWS = 200  # rows of the delta table in a forge request body (GitHub caps bodies at 64 KiB)


# ---------------------------------------------------------------- selecting models


@dataclass
class Candidate:
    """A model the source env serves, with what the target serves now."""

    name: str
    blob: str
    version: str
    previous: str | None


def _candidates(repo: Path, base: str, source: str, target: str) -> dict[str, Candidate]:
    """Every model in `source` at `base`, with the version `target` serves (if any)."""
    src, dst = env_blobs(repo, base, source), env_blobs(repo, base, target)
    wanted = sorted({*src.values(), *(dst[n] for n in src if n in dst)})
    texts = read_blobs(repo, wanted)
    out = {}
    for name, blob in src.items():
        prev = version_of(texts.get(dst[name], "")) if name in dst else None
        out[name] = Candidate(name, blob, version_of(texts.get(blob, "")) or "", prev)
    return out


def _rows(s: Any, layout: str) -> dict[str, Model]:
    """Registry models by the name their deploy folder has: `acme/churn` (a tenant's folder)
    and, for a deploy repo laid out before tenants, also the bare name when it is free (in
    the reference layout, the deployment name: `churn-predictor-model` -> `churn-predictor`)."""
    models = list(s.scalars(select(Model).order_by(Model.id)))
    rows = {qualified(m.tenant, deployment_name(m.name, layout)): m for m in models}
    for m in models:
        rows.setdefault(deployment_name(m.name, layout), m)
    return rows


def _tenant_of(name: str, rows: dict[str, Model]) -> str:
    """The tenant of a candidate: its registry row's, else its qualified name's."""
    if name in rows:
        return rows[name].tenant or DEFAULT_TENANT
    owner, sep, _ = name.rpartition("/")
    return owner if sep and owner else DEFAULT_TENANT


def _scoped(
    cands: dict[str, Candidate],
    rows: dict[str, Model],
    tenant: str | None,
    tenants: frozenset[str] | None,
) -> dict[str, Candidate]:
    """The candidates of `tenant` (if named) among the visible `tenants` (None: all)."""
    return {
        name: c
        for name, c in cands.items()
        if (tenant is None or _tenant_of(name, rows) == tenant)
        and (tenants is None or _tenant_of(name, rows) in tenants)
    }


def _one_tenant(chosen: list[Candidate], rows: dict[str, Model]) -> str:
    """The one tenant of the chosen models; ConfigError naming them when they mix tenants."""
    by_tenant: dict[str, list[str]] = {}
    for c in chosen:
        by_tenant.setdefault(_tenant_of(c.name, rows), []).append(c.name)
    if len(by_tenant) == 1:
        return next(iter(by_tenant))
    shown = "; ".join(
        f"{t}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
        for t, names in sorted(by_tenant.items())
    )
    raise ConfigError(
        f"a promotion request belongs to one tenant, and the selected models are of "
        f"{len(by_tenant)} ({shown}); promote each tenant's models separately (--tenant T)"
    )


def _required(ws: Workspace, store: Store, tenant: str, env: str) -> int:
    """Approvals a request of `tenant` needs in `env`; a tenant only labelled on specs (not
    declared) gets the environment's count, the floor every tenant has."""
    try:
        return approvals_required(ws, tenant, env, store)
    except NotFoundError:
        return ws.settings.environments[env].approvals


def parse_labels(labels: list[str] | None) -> dict[str, str]:
    """['k=v', ...] -> {k: v}; a clear error for anything else."""
    out = {}
    for item in labels or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--label expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _select(
    cands: dict[str, Candidate],
    models: list[str],
    all_changed: bool,
    pipeline: str | None,
    labels: dict[str, str],
    rows: dict[str, Model],
    source: str,
) -> list[Candidate]:
    models = [_deployed_ref(m, cands, source) for m in models]
    chosen = [cands[m] for m in dict.fromkeys(models)] if models else list(cands.values())
    if pipeline:
        chosen = [c for c in chosen if c.name in rows and rows[c.name].pipeline == pipeline]
    if labels:
        chosen = [
            c
            for c in chosen
            if c.name in rows
            and all(str((rows[c.name].labels or {}).get(k)) == v for k, v in labels.items())
        ]
    return [c for c in chosen if c.version != c.previous]


def _deployed_ref(ref: str, cands: dict[str, Candidate], source: str) -> str:
    """The qualified name `ref` means among the models `source` serves."""
    if ref in cands:
        return ref
    owner, sep, name = ref.rpartition("/")
    folder = f"{owner}{sep}{deployment_name(name, REFERENCE)}"
    if folder in cands:  # a spec name whose deployment drops `-model` (reference layout)
        return folder
    known = [model_key(c) for c in cands]
    try:
        return resolve_ref(ref, known, source)
    except NotFoundError:
        raise NotFoundError(
            f"model {ref!r} is not deployed in {source}; only what "
            f"{source} serves can be promoted." + did_you_mean(ref, set(cands))
        ) from None


# ---------------------------------------------------------------- metric deltas


def _versions(s: Any, ids: list[int]) -> dict[tuple[int, str], ModelVersion]:
    found: dict[tuple[int, str], ModelVersion] = {}
    for i in range(0, len(ids), 500):
        q = select(ModelVersion).where(ModelVersion.model_id.in_(ids[i : i + 500]))
        for v in s.scalars(q):
            found[(v.model_id, v.version)] = v
    return found


def deltas(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per metric: {"from": old, "to": new, "delta": new - old} (None where unknown)."""
    out = {}
    for key in sorted({*new, *(old or {})}):
        a, b = (old or {}).get(key), new.get(key)
        numeric = isinstance(a, int | float) and isinstance(b, int | float)
        out[key] = {"from": a, "to": b, "delta": round(b - a, 6) if numeric else None}  # type: ignore[operator]
    return out


def delta_table(items: list[dict[str, Any]], limit: int | None = None) -> str:
    """The request's metric-delta table in Markdown (for the forge body and the CLI)."""
    lines = ["| model | from | to | metric deltas |", "|---|---|---|---|"]
    for item in items[:limit]:
        lines.append(
            f"| {item['model']} | {item['from'] or '-'} | {item['to']} | "
            f"{format_deltas(item['metrics'])} |"
        )
    if limit is not None and len(items) > limit:
        lines.append(f"| … and {len(items) - limit} more | | | |")
    return "\n".join(lines)


def format_deltas(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """'accuracy 0.91 (+0.02), f1 0.88 (new)' for one item."""
    parts = []
    for key, m in metrics.items():
        to = m["to"]
        shown = f"{to:.4g}" if isinstance(to, int | float) else str(to)
        if m["delta"] is not None:
            parts.append(f"{key} {shown} ({m['delta']:+.4g})")
        else:
            parts.append(
                f"{key} {shown} ({'new' if m['from'] is None else 'was ' + str(m['from'])})"
            )
    return ", ".join(parts) or "-"


def _items(
    s: Any, chosen: list[Candidate], rows: dict[str, Model], env: str, layout: str
) -> list[dict[str, Any]]:
    missing = [c.name for c in chosen if c.name not in rows]
    if missing:
        raise NotFoundError(
            f"model {missing[0]!r} is deployed but not in the registry; run `mw apply` first"
        )
    versions = _versions(s, sorted({rows[c.name].id for c in chosen}))
    items = []
    for c in chosen:
        model = rows[c.name]
        new = versions.get((model.id, c.version))
        if new is None or new.status != "registered":
            state = (
                "not registered" if new is None else f"{new.status} ({new.reason or 'no reason'})"
            )
            raise DeployError(
                f"{c.name}: version {c.version!r} is {state}; only registered "
                "versions can be promoted"
            )
        if (new.lineage or {}).get("dirty"):
            raise DeployError(
                f"{c.name}: version {c.version!r} was trained from uncommitted inputs "
                "(mw apply --allow-dirty) and is never promoted; commit them and run `mw apply`"
            )
        old = versions.get((model.id, c.previous)) if c.previous else None
        items.append(
            {
                "model": c.name,
                "model_id": model.id,
                "tenant": model.tenant,
                "from": c.previous,
                "to": c.version,
                "digest": new.artifact_digest,
                "path": config_path(env, c.name, layout=layout),
                "blob": c.blob,
                "metrics": deltas(new.metrics or {}, old.metrics if old else None),
            }
        )
    return items


# ---------------------------------------------------------------- opening


def _env_settings(ws: Workspace, env: str, source: str) -> int:
    envs = ws.settings.environments
    for name in (env, source):
        if name not in envs:
            raise ConfigError(
                f"environment {name!r} is not in modelworks.yaml (environments: "
                f"{', '.join(envs)})." + did_you_mean(name, set(envs))
            )
    if env == source:
        raise ConfigError(f"cannot promote from {source!r} to itself; pass --to another env")
    return envs[env].approvals


def _shown(items: list[dict[str, Any]]) -> str:
    names = [i["model"] for i in items]
    return ", ".join(names) if len(names) <= 3 else f"{len(names)} models"


def _title(items: list[dict[str, Any]], env: str) -> str:
    return f"Promote {_shown(items)} to {env}"


def _body(items: list[dict[str, Any]], source: str, env: str, author: str) -> str:
    return (
        f"Promotion of {len(items)} model(s) from {source} to {env}, opened by {author}.\n\n"
        f"{delta_table(items, BODY_ROWS)}\n"
    )


def promote(
    ws: Workspace,
    store: Store,
    models: list[str] | None = None,
    *,
    to: str = "prod",
    source: str = "test",
    all_changed: bool = False,
    pipeline: str | None = None,
    labels: list[str] | None = None,
    actor: str,
    environ: Mapping[str, str] | None = None,
    tenant: str | None = None,
    tenants: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Open one promotion request (branch promote/<id> + record) for the selected models.

    Select by names, `all_changed`, `pipeline` or `labels` (k=v), within `tenant` if given;
    only models whose version in `source` differs from what `to` serves are included. A
    request belongs to one tenant: selected models of several tenants are refused. With
    `tenants` (the caller's visible tenants; None: all) another tenant's model is as
    missing. The approvals it needs are `approvals_required` for its tenant (a tenant may
    tighten the environment's count, never loosen it). An env needing none merges at once.
    """
    _env_settings(ws, to, source)
    if not (models or all_changed or pipeline or labels):
        raise ConfigError(
            "name the models to promote, or pass --all-changed, --pipeline or --label"
        )
    wanted_labels = parse_labels(labels)
    state = repo_state(ws.deploy_repo)
    cands = _candidates(state.repo, state.tip, source, to)
    provider = provider_for(ws, environ)
    with store.session() as s:
        rows = _rows(s, layout_of(state.repo))
        cands = _scoped(cands, rows, tenant, tenants)
        chosen = _select(cands, models or [], all_changed, pipeline, wanted_labels, rows, source)
        if not chosen:
            raise DeployError(
                f"nothing to promote: {to} already serves what {source} serves "
                "for the selected models"
            )
        owner = _one_tenant(chosen, rows)
        required = _required(ws, store, owner, to)
        items = _items(s, chosen, rows, to, layout_of(state.repo))
        req = _open_record(s, items, to, source, actor, required, state, provider, owner)
        result = request_dict(req, [])
    picked = {c.name for c in chosen}
    result["unchanged"] = [m for m in dict.fromkeys(models or []) if m not in picked]
    audit.record(
        store,
        [
            audit.event(
                "promotion.opened",
                f"promotion/{req.id}",
                actor=actor,
                tenant=req.tenant,
                after={
                    "env": to,
                    "from_env": source,
                    "branch": req.branch,
                    "models": len(items),
                    "head": req.head_commit,
                    "forge_url": req.forge_url,
                },
            )
        ],
    )
    if required == 0:
        with _lock(ws):
            return {**_finish(ws, store, req.id, actor, provider), "unchanged": result["unchanged"]}
    return result


def _open_record(
    s: Any,
    items: list[dict[str, Any]],
    env: str,
    source: str,
    actor: str,
    required: int,
    state: RepoState,
    provider: ForgeProvider,
    tenant: str,
) -> PromotionRequest:
    req = PromotionRequest(
        env=env,
        branch="",
        base_commit=state.tip,
        author=actor,
        tenant=tenant,
        title=_title(items, env),
        items=items,
        required_approvals=required,
        forge=provider.name,
    )
    s.add(req)
    s.flush()
    req.branch = f"promote/{req.id}"
    ref = f"refs/heads/{req.branch}"
    if _git.head(state.repo, ref):
        raise ConflictError(
            f"branch {req.branch} already exists in {state.repo} (left from an "
            f"older registry?); delete it with `git -C {state.repo} branch -D "
            f"{req.branch}` and promote again"
        )
    lines = "\n".join(f"- {i['model']}: {i['from'] or '(none)'} -> {i['to']}" for i in items[:200])
    message = f"promote({env}): {_shown(items)} from {source}\n\n{lines}\n"
    req.head_commit = commit_files(
        state.repo, state.tip, {i["path"]: i["blob"] for i in items}, message, actor
    )
    update_ref(state.repo, ref, req.head_commit, ZERO_SHA, f"mw promote: request {req.id}")
    try:
        opened = provider.open(
            branch=req.branch,
            base=state.branch,
            title=req.title,
            body=_body(items, source, env, actor),
        )
    except BaseException:
        run_git(state.repo, "update-ref", "-d", ref, req.head_commit, check=False)
        raise
    req.forge_id, req.forge_url = opened.id, opened.url
    return req
