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
from modelworks._deployrepo import REFERENCE, layout_of
from modelworks.errors import ConfigError, ConflictError, DeployError, PermissionDeniedError
from modelworks.gitops.attest import attestation_path, is_gated, sign_attestation
from modelworks.gitops.deploy import DEPLOY_DIR, env_prefix
from modelworks.gitops.records import (
    _approvals,
    _get,
    _lock,
    _require_open,
    get_promotion,
    provider_for,
)
from modelworks.gitops.repo import (
    ZERO_SHA,
    RepoState,
    advance,
    dirty_paths,
    is_ancestor,
    merge_commit,
    read_blobs,
    repo_state,
    run_git,
    update_ref,
    write_blob,
)
from modelworks.names import normalize
from modelworks.registry import audit
from modelworks.registry.models import Approval, Deployment, PromotionRequest

if TYPE_CHECKING:
    from modelworks.gitops.forge import ForgeProvider
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

INTENT_PREFIX = "refs/modelworks/merging/"


def approve(
    ws: Workspace,
    store: Store,
    request_id: int,
    *,
    actor: str,
    comment: str | None = None,
    environ: Mapping[str, str] | None = None,
    tenants: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Approve a request as `actor`; the approval that completes the count merges it.

    Approving again after a failed merge (a forge error, a busy repo) retries the merge, and
    after an interrupted one (a crash, kill -9) completes it: see `resume`. With `tenants`
    (the approver's visible tenants; None: all) another tenant's request is not found, and
    nothing about it changes.
    """
    actor = normalize(actor)
    require_visible(store, request_id, tenants)
    provider = provider_for(ws, environ)
    with _lock(ws):
        resumed = resume(ws, store, request_id, actor, provider)
        if resumed is not None:
            return resumed
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
    actor = normalize(actor)
    with store.session() as s:
        req = _get(s, request_id)
        _require_open(req)
        if actor == normalize(req.author):
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
    tenants: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Reject a request: record why, close it (and its forge request), merge nothing.

    With `tenants` (None: all) another tenant's request is not found and stays untouched."""
    require_visible(store, request_id, tenants)
    if not reason.strip():
        raise ConfigError("a rejection needs a reason (--reason TEXT)")
    provider = provider_for(ws, environ)
    with _lock(ws), store.session() as s:
        req = _get(s, request_id)
        _require_open(req)
        if provider.name == "local" and _git.head(ws.deploy_repo, intent_ref(req.id)):
            raise ConflictError(
                f"an interrupted `mw approve {req.id}` was merging promotion request {req.id}; "
                f"run `mw approve {req.id}` to complete it (then roll back if needed)"
            )
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


def require_visible(store: Store, request_id: int, tenants: frozenset[str] | None) -> None:
    """NotFoundError (a missing request's message) unless the request is one of `tenants`'."""
    if tenants is not None:
        with store.session() as s:
            _get(s, request_id, tenants)


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
            env_prefix(req.env, layout_of(state.repo)),
        ).split("\0")
        clash = sorted(ours.intersection(changed))
        if clash:
            more = f" (and {len(clash) - 1} more)" if len(clash) > 1 else ""
            raise ConflictError(
                f"{clash[0]}{more} changed on {state.branch} since the request "
                "was opened; open a new request"
            )
    if state.worktree:
        where = (
            f"{DEPLOY_DIR}/"
            if layout_of(state.repo) != REFERENCE
            else env_prefix(req.env, REFERENCE)
        )
        dirty = dirty_paths(state.repo, where)
        if dirty:
            raise DeployError(
                f"the deploy repository {state.repo} has uncommitted changes under "
                f"{where} ({', '.join(dirty[:3])}); commit or discard them, "
                "then approve again"
            )
    return state


def _merge_message(req: PromotionRequest, approvers: list[str]) -> str:
    return f"Merge promotion #{req.id}: {req.title}\n\nRequested-by: {req.author}\n" + "".join(
        f"Approved-by: {a}\n" for a in approvers
    )


def intent_ref(request_id: int) -> str:
    """The ref an approve points at its planned merge commit before it moves main."""
    return f"{INTENT_PREFIX}{int(request_id)}"


def resume(
    ws: Workspace, store: Store, request_id: int, actor: str, provider: ForgeProvider
) -> dict[str, Any] | None:
    """Complete an approve that was interrupted after it planned its merge; None if none was.

    An approve writes `refs/modelworks/merging/<id>` (the planned merge commit) before it
    moves main, and deletes it after the registry and the audit log know. Finding it means a
    crash: the merge is finished (main moved to it if it had not), recorded, and audited.
    Approving again a request this approver's approval already merged changes nothing.
    """
    if provider.name != "local":
        return None
    pending = _git.head(ws.deploy_repo, intent_ref(request_id)) is not None
    with store.session() as s:
        req = _get(s, request_id)
        state, approvers = req.state, _approvers(s, req)
        events = _merged_events(req, approvers, req.merge_commit, actor)
    if not pending:
        done = state == "merged" and actor in approvers
        return get_promotion(store, request_id) if done else None
    if state == "open":
        return _finish(ws, store, request_id, actor, provider)
    if state == "merged" and not audit.rows(
        store, action="promotion.merged", target=f"promotion/{request_id}"
    ):
        audit.record(store, events)
    _clear_intent(ws, request_id)
    return get_promotion(store, request_id)


def _approvers(s: Any, req: PromotionRequest) -> list[str]:
    return [a.actor for a in _approvals(s, req.id) if a.decision == "approve"]


def _clear_intent(ws: Workspace, request_id: int) -> None:
    run_git(ws.deploy_repo, "update-ref", "-d", intent_ref(request_id), check=False)


def _recover(ws: Workspace, req: PromotionRequest) -> str | None:
    """The planned merge of an interrupted approve, with main moved to it; None if stale."""
    planned = _git.head(ws.deploy_repo, intent_ref(req.id))
    if planned is None:
        return None
    state = repo_state(ws.deploy_repo)
    if is_ancestor(state.repo, planned, state.tip):
        return planned
    if run_git(state.repo, "rev-parse", f"{planned}^1").strip() == state.tip:
        advance(state, planned, f"mw: merge {req.branch} (resumed)")
        return planned
    _clear_intent(ws, req.id)  # main moved on before this merge landed: plan it again
    return None


def _merge(
    ws: Workspace, req: PromotionRequest, message: str, approvers: list[str], actor: str
) -> str:
    """Plan the merge commit (with attestations in a gated env), record the intent, move main."""
    state = check_mergeable(ws, req)
    extra: dict[str, str] = {}
    if is_gated(ws, req.env):
        items = list(req.items or [])
        texts = read_blobs(state.repo, sorted({i["blob"] for i in items}))
        for i in items:
            signed = sign_attestation(
                ws,
                env=req.env,
                model=i["model"],
                config_text=texts[i["blob"]],
                kind="promote",
                promotion=req.id,
                requested_by=req.author,
                approvers=approvers,
                actor=actor,
            )
            extra[attestation_path(req.env, i["model"], layout_of(state.repo))] = write_blob(
                state.repo, signed
            )
    planned = merge_commit(state, req.branch, message, actor, extra)
    ref = intent_ref(req.id)
    update_ref(state.repo, ref, planned, ZERO_SHA, f"mw approve: merging request {req.id}")
    try:
        advance(state, planned, f"mw: merge {req.branch}")
    except BaseException:
        _clear_intent(ws, req.id)
        raise
    return planned


def _finish(
    ws: Workspace, store: Store, request_id: int, actor: str, provider: ForgeProvider
) -> dict[str, Any]:
    """Merge an approved request and record the deployments (the caller holds the lock)."""
    with store.session() as s:
        req = _get(s, request_id)
        _require_open(req)
        approvers = _approvers(s, req)
        message = _merge_message(req, approvers)
        commit: str | None = None
        if provider.name == "local":
            commit = _recover(ws, req) or _merge(ws, req, message, approvers, actor)
        if req.forge_id:
            provider.merge(req.forge_id, message=message)
        req.state, req.merge_commit, req.closed_at = "merged", commit, datetime.now(UTC)
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
            for i in req.items or []
        )
        events = _merged_events(req, approvers, commit, actor)
    audit.record(store, events)
    _clear_intent(ws, request_id)
    return get_promotion(store, request_id)


def _merged_events(
    req: PromotionRequest, approvers: list[str], commit: str | None, actor: str
) -> list[Mapping[str, Any]]:
    items = list(req.items or [])
    events: list[Mapping[str, Any]] = [
        audit.event(
            "promotion.merged",
            f"promotion/{req.id}",
            actor=actor,
            tenant=req.tenant,
            after={"commit": commit, "approvers": approvers, "models": len(items)},
        )
    ]
    events += [
        audit.event(
            "deployment",
            i["model"],
            actor=actor,
            tenant=i["tenant"],
            before={"env": req.env, "version": i["from"]},
            after={
                "env": req.env,
                "version": i["to"],
                "commit": commit,
                "kind": "promote",
                "request": req.id,
            },
        )
        for i in items
    ]
    return events
