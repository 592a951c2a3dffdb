"""Adopting a gated environment's configs from before approval attestations existed.

A workspace upgraded to attestations has prod configs merged by approved promotions but no
`approval.json` beside them, so `mw serve` would refuse them. `mw attest --env prod` signs an
attestation for each such config only when the registry proves it came through an approval:
the commit on main that last changed it is the merge commit of a merged promotion request that
included the model, or its bytes are exactly what such a merge put there (a rollback to an
approved version). Anything else stays refused and is listed, to be promoted again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from modelworks._deployrepo import layout_of
from modelworks.errors import ConfigError
from modelworks.gitops.attest import approved_env, attestation_path, is_gated, sign_attestation
from modelworks.gitops.deploy import config_path
from modelworks.gitops.repo import (
    advance,
    commit_files,
    dirty_paths,
    read_blobs,
    repo_state,
    write_blob,
)
from modelworks.registry import audit
from modelworks.registry.models import Approval, PromotionRequest

if TYPE_CHECKING:
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace


def _merged(store: Store, env: str) -> dict[str, tuple[PromotionRequest, list[str]]]:
    """Merged requests of `env` by merge commit, with their approvers."""
    with store.session() as s:
        reqs = list(
            s.scalars(
                select(PromotionRequest).where(
                    PromotionRequest.env == env, PromotionRequest.state == "merged"
                )
            )
        )
        approvals = list(s.scalars(select(Approval).where(Approval.decision == "approve")))
        s.expunge_all()
    by_req: dict[int, list[str]] = {}
    for a in approvals:
        by_req.setdefault(a.request_id, []).append(a.actor)
    return {r.merge_commit: (r, by_req.get(r.id, [])) for r in reqs if r.merge_commit}


def adopt(ws: Workspace, store: Store, env: str, *, actor: str) -> dict[str, Any]:
    """Sign attestations for `env`'s unattested configs the registry proves were approved."""
    if not is_gated(ws, env):
        raise ConfigError(
            f"environment {env!r} needs no approvals; its configs need no attestation"
        )
    state = repo_state(ws.deploy_repo)
    check = approved_env(ws, env, state.tip)
    layout = layout_of(state.repo)
    merged = _merged(store, env)
    names = {r.model: r for r in check.refused}
    wanted = [f"{c}:{config_path(env, m, layout=layout)}" for c in merged for m in names]
    wanted += [f"{state.tip}:{config_path(env, m, layout=layout)}" for m in names]
    texts = read_blobs(state.repo, wanted)
    files: dict[str, str] = {}
    adopted: list[dict[str, Any]] = []
    unproven: list[dict[str, Any]] = []
    for model, refusal in names.items():
        text = texts.get(f"{state.tip}:{config_path(env, model, layout=layout)}")
        proof = next(
            (
                merged[c]
                for c in [refusal.commit, *merged]
                if c in merged
                and any(i["model"] == model for i in merged[c][0].items or [])
                and texts.get(f"{c}:{config_path(env, model, layout=layout)}") == text
            ),
            None,
        )
        if proof is None or text is None:
            unproven.append(refusal.to_json())
            continue
        req, approvers = proof
        files[attestation_path(env, model, layout)] = sign_attestation(
            ws,
            env=env,
            model=model,
            config_text=text,
            kind="promote",
            promotion=req.id,
            requested_by=req.author,
            approvers=approvers,
            actor=actor,
        )
        adopted.append({"model": model, "promotion": req.id})
    commit = _commit(state, env, files, actor) if files else None
    if adopted:
        audit.record(
            store,
            [
                audit.event(
                    "attestation.adopted",
                    a["model"],
                    actor=actor,
                    after={"env": env, "promotion": a["promotion"], "commit": commit},
                )
                for a in adopted
            ],
        )
    return {"env": env, "commit": commit, "adopted": adopted, "unproven": unproven}


def _commit(state: Any, env: str, files: dict[str, str], actor: str) -> str:
    for rel in files:
        if state.worktree and dirty_paths(state.repo, rel):
            raise ConfigError(f"{state.repo / rel} has uncommitted changes; commit or discard them")
    blobs = {rel: write_blob(state.repo, text) for rel, text in files.items()}
    message = f"attest({env}): {len(files)} config(s) approved before attestations\n\n" + "".join(
        f"- {rel}\n" for rel in sorted(files)
    )
    new = commit_files(state.repo, state.tip, blobs, message, actor)
    advance(state, new, f"mw attest: {env}")
    return new
