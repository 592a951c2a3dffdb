"""Deciding promotion requests: approve (the last approval merges), reject, and the merge.

`approve` counts approvals (never the author's); the last one merges the branch into the
deploy repo's main with a real merge commit, refusing when the same files changed on main
since the request was opened. `reject` closes it unmerged.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from modelworks import _git
from modelworks.errors import ConfigError, ConflictError, DeployError, PermissionDeniedError
from modelworks.gitops.deploy import DEPLOY_DIR
from modelworks.gitops.records import (
    _approvals,
    _get,
    _lock,
    _require_open,
    get_promotion,
    provider_for,
)
from modelworks.gitops.repo import RepoState, dirty_paths, merge_branch, repo_state, run_git
from modelworks.registry import audit
from modelworks.registry.models import Approval, Deployment, PromotionRequest

if TYPE_CHECKING:
    from modelworks.gitops.forge import ForgeProvider
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace


def approve(
    ws: Workspace,
    store: Store,
    request_id: int,
    *,
    actor: str,
    comment: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Approve a request as `actor`; the approval that completes the count merges it.

    Approving again after a failed merge (a forge error, a busy repo) retries the merge.
    """
    provider = provider_for(ws, environ)
    with _lock(ws):
        count, required = _record_approval(ws, store, request_id, actor, comment, provider)
        if count < required:
            return get_promotion(store, request_id)
        return _finish(ws, store, request_id, actor, provider)


def _record_approval(
    ws: Workspace,
    store: Store,
    request_id: int,
    actor: str,
    comment: str | None,
    provider: ForgeProvider,
) -> tuple[int, int]:
    """Check and store one approval; return (approvals now, approvals required)."""
    with store.session() as s:
        req = _get(s, request_id)
        _require_open(req)
        if actor == req.author:
            raise PermissionDeniedError(
                f"{actor} opened promotion request {req.id} and cannot "
                "approve it; another approver must"
            )
        approved = {a.actor for a in _approvals(s, req.id) if a.decision == "approve"}
        count, required = len(approved | {actor}), req.required_approvals
        if actor in approved and count < required:
            raise ConflictError(
                f"{actor} already approved promotion request {req.id} "
                f"({count}/{required} approvals)"
            )
        if count >= required and provider.name == "local":
            check_mergeable(ws, req)
        if actor in approved:
            return count, required
        s.add(Approval(request_id=req.id, actor=actor, decision="approve", comment=comment))
        tenant = req.tenant
    event = audit.event(
        "promotion.approved",
        f"promotion/{request_id}",
        actor=actor,
        tenant=tenant,
        after={"approvals": count, "comment": comment},
    )
    audit.record(store, [event])
    return count, required


def reject(
    ws: Workspace,
    store: Store,
    request_id: int,
    *,
    actor: str,
    reason: str,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Reject a request: record why, close it (and its forge request), merge nothing."""
    if not reason.strip():
        raise ConfigError("a rejection needs a reason (--reason TEXT)")
    provider = provider_for(ws, environ)
    with _lock(ws), store.session() as s:
        req = _get(s, request_id)
        _require_open(req)
        if req.forge_id:
            provider.close(req.forge_id, comment=f"Rejected by {actor}: {reason}")
        s.add(Approval(request_id=req.id, actor=actor, decision="reject", comment=reason))
        req.state, req.closed_at, tenant = "rejected", datetime.now(UTC), req.tenant
    audit.record(
        store,
        [
            audit.event(
                "promotion.rejected",
                f"promotion/{request_id}",
                actor=actor,
                tenant=tenant,
                after={"reason": reason},
            )
        ],
    )
    return get_promotion(store, request_id)


def check_mergeable(ws: Workspace, req: PromotionRequest) -> RepoState:
    """Refuse when the branch moved, the request's files changed on main, or deploy/ is dirty."""
    state = repo_state(ws.deploy_repo)
    tip = _git.head(state.repo, f"refs/heads/{req.branch}")
    if tip != req.head_commit:
        raise ConflictError(
            f"branch {req.branch} {'is gone' if tip is None else 'moved'} since "
            f"promotion request {req.id} was opened; open a new request"
        )
    if state.tip != req.base_commit:
        ours = {i["path"] for i in req.items or []}
        changed = run_git(
            state.repo,
            "diff",
            "--name-only",
            "-z",
            req.base_commit or "",
            state.tip,
            "--",
            f"{DEPLOY_DIR}/{req.env}/",
        ).split("\0")
        clash = sorted(ours.intersection(changed))
        if clash:
            more = f" (and {len(clash) - 1} more)" if len(clash) > 1 else ""
            raise ConflictError(
                f"{clash[0]}{more} changed on {state.branch} since the request "
                "was opened; open a new request"
            )
    if state.worktree:
        dirty = dirty_paths(state.repo, f"{DEPLOY_DIR}/")
        if dirty:
            raise DeployError(
                f"the deploy repository {state.repo} has uncommitted changes under "
                f"{DEPLOY_DIR}/ ({', '.join(dirty[:3])}); commit or discard them, "
                "then approve again"
            )
    return state


def _merge_message(req: PromotionRequest, approvers: list[str]) -> str:
    return f"Merge promotion #{req.id}: {req.title}\n\nRequested-by: {req.author}\n" + "".join(
        f"Approved-by: {a}\n" for a in approvers
    )


def _finish(
    ws: Workspace, store: Store, request_id: int, actor: str, provider: ForgeProvider
) -> dict[str, Any]:
    """Merge an approved request and record the deployments (the caller holds the lock)."""
    with store.session() as s:
        req = _get(s, request_id)
        _require_open(req)
        approvers = [a.actor for a in _approvals(s, req.id) if a.decision == "approve"]
        message = _merge_message(req, approvers)
        commit: str | None = None
        if provider.name == "local":
            commit = merge_branch(check_mergeable(ws, req), req.branch, message, actor)
        if req.forge_id:
            provider.merge(req.forge_id, message=message)
        req.state, req.merge_commit, req.closed_at = "merged", commit, datetime.now(UTC)
        items = list(req.items or [])
        s.add_all(
            Deployment(
                model_id=i["model_id"],
                env=req.env,
                version=i["to"],
                artifact_digest=i.get("digest"),
                commit=commit,
                kind="promote",
                actor=actor,
            )
            for i in items
        )
        tenant, env = req.tenant, req.env
    events: list[Mapping[str, Any]] = [
        audit.event(
            "promotion.merged",
            f"promotion/{request_id}",
            actor=actor,
            tenant=tenant,
            after={"commit": commit, "approvers": approvers, "models": len(items)},
        )
    ]
    events += [
        audit.event(
            "deployment",
            i["model"],
            actor=actor,
            tenant=i["tenant"],
            before={"env": env, "version": i["from"]},
            after={
                "env": env,
                "version": i["to"],
                "commit": commit,
                "kind": "promote",
                "request": request_id,
            },
        )
        for i in items
    ]
    audit.record(store, events)
    return get_promotion(store, request_id)
