"""What an environment served when (`history`), and putting an earlier version back (`rollback`).

Both read the first-parent history of `deploy/<env>/<model>/config.yaml` on the deploy
repo's main branch: one `git log` and one `git cat-file --batch`, whatever the length.
A rollback is a revert-style commit "rollback(prod): MODEL B -> A" that restores the
file as it was when A was served (or writes A's config from the registry when A was
never served there), recorded as a Deployment of kind "rollback".
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from modelworks._deployrepo import layout_of
from modelworks.errors import DeployError, NotFoundError
from modelworks.gitops.attest import attestation_path, is_gated
from modelworks.gitops.deploy import config_path
from modelworks.gitops.reference import registered_name
from modelworks.gitops.repo import (
    RepoState,
    advance,
    commit_files,
    dirty_paths,
    read_blobs,
    repo_state,
    run_git,
    version_of,
    write_blob,
)
from modelworks.registry import audit
from modelworks.registry.models import Deployment, ModelVersion, PromotionRequest
from modelworks.registry.queries import get_model
from modelworks.tenancy.names import split_ref

if TYPE_CHECKING:
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace


@dataclass
class Served:
    """One commit that changed what an environment serves for a model."""

    commit: str
    date: str
    author: str
    version: str | None  # None: the model was removed from the env by this commit
    message: str
    text: str | None = None


def _log(state: RepoState, path: str, limit: int | None) -> list[Served]:
    args = ["log", "--first-parent", "--format=%H%x1f%aI%x1f%an%x1f%s%x1e"]
    if limit:
        args.append(f"-n{limit}")
    out = run_git(state.repo, *args, state.branch, "--", path)
    entries = [e.strip("\n").split("\x1f") for e in out.split("\x1e") if e.strip()]
    texts = read_blobs(state.repo, [f"{e[0]}:{path}" for e in entries])
    served = []
    for sha, date, author, subject in entries:
        text = texts.get(f"{sha}:{path}")
        served.append(Served(sha, date, author, version_of(text) if text else None, subject, text))
    return served


def history(
    ws: Workspace,
    model: str,
    env: str = "prod",
    limit: int | None = None,
    *,
    store: Store | None = None,
    tenants: frozenset[str] | None = None,
) -> list[dict[str, Any]]:
    """What `env` served for `model`, newest first: commit, date, author, version, message.

    With `tenants` (the caller's visible tenants; None: all) the model must be one of theirs
    in the registry `store`: another tenant's is not found, as a missing one is.
    """
    if tenants is not None:
        model = _visible_ref(ws, store, model, tenants)
    state = repo_state(ws.deploy_repo)
    path = config_path(env, model, layout=layout_of(state.repo))
    served = _log(state, path, limit)
    if not served:
        raise NotFoundError(
            f"{model} has never been deployed in {env} (no history of "
            f"{path} on {state.branch} in {state.repo})"
        )
    rows = []
    for i, entry in enumerate(served):
        row = {k: v for k, v in asdict(entry).items() if k != "text"}
        row["previous"] = served[i + 1].version if i + 1 < len(served) else None
        rows.append(row)
    return rows


def _visible_ref(
    ws: Workspace, store: Store | None, model: str, tenants: frozenset[str] | None
) -> str:
    """The qualified name of `model` among the `tenants`' registered models (NotFoundError)."""
    from modelworks.registry.store import Store

    return registered_name(
        store or Store(ws.registry_url), model, layout_of(ws.deploy_repo), tenants
    )


def _registered(store: Store, model: str, version: str) -> tuple[int, str, ModelVersion]:
    """The model's id, tenant and the version's row; a clear error unless it is registered."""
    with store.session() as s:
        m = get_model(s, model)
        v = s.scalar(
            select(ModelVersion)
            .where(ModelVersion.model_id == m.id, ModelVersion.version == version)
            .order_by(ModelVersion.id.desc())
            .limit(1)
        )
        if v is None:
            known = s.scalars(
                select(ModelVersion.version).where(
                    ModelVersion.model_id == m.id, ModelVersion.status == "registered"
                )
            ).all()
            raise NotFoundError(
                f"{model} has no version {version!r} in the registry "
                f"(registered: {', '.join(known[-5:]) or 'none'})"
            )
        if v.status != "registered":
            raise DeployError(
                f"{model} version {version} is {v.status}"
                f"{': ' + v.reason if v.reason else ''}; only a registered "
                "version can be rolled back to"
            )
        if (v.lineage or {}).get("dirty"):
            raise DeployError(
                f"{model} version {version} was trained from uncommitted inputs (dirty) and "
                "is never deployed; commit them and apply to get a clean version"
            )
        return m.id, m.tenant, v


def _target(
    served: list[Served], current: str, to: str | None, model: str, env: str
) -> tuple[str, Served | None]:
    """The version to put back and the commit that last served it there (if any)."""
    if to is None:
        earlier = next((e for e in served if e.version and e.version != current), None)
        if earlier is None:
            raise DeployError(
                f"{model} has served only {current} in {env}; there is no earlier "
                "version to roll back to (name one with --to VERSION)"
            )
        return earlier.version or "", earlier
    if to == current:
        raise DeployError(f"{model} already serves {to} in {env}; nothing to roll back")
    return to, next((e for e in served if e.version == to), None)


def _config_text(
    ws: Workspace, model: str, tenant: str, v: ModelVersion, current: str | None
) -> str:
    """A config.yaml for a version never served in this env, built from its registry row."""
    import yaml

    from modelworks.gitops.deploy import deploy_config

    runtime = (v.inputs or {}).get("spec", {}).get("runtime")
    if not runtime and current:
        runtime = (yaml.safe_load(current) or {}).get("runtime")
    cfg = deploy_config(
        ws,
        split_ref(model)[1],
        tenant,
        str(runtime or "sklearn"),
        v.version,
        v.fingerprint,
        v.artifact_digest or "",
        v.oci_layout or "",
    )
    return cfg.to_yaml(layout_of(ws.deploy_repo))


def _commit(state: RepoState, path: str, files: dict[str, str], message: str, actor: str) -> str:
    """Commit `files` (path -> text) on main (moving the work tree too when it is checked out)."""
    for rel in files:
        if state.worktree and dirty_paths(state.repo, rel):
            raise DeployError(
                f"{state.repo / rel} has uncommitted changes; commit or discard them, "
                "then roll back again"
            )
    blobs = {rel: write_blob(state.repo, text) for rel, text in files.items()}
    new = commit_files(state.repo, state.tip, blobs, message, actor)
    advance(state, new, f"mw: rollback {path}")
    return new


def rollback(
    ws: Workspace,
    store: Store,
    model: str,
    *,
    env: str = "prod",
    to: str | None = None,
    actor: str,
    tenants: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Put the previous (or the named) version of `model` back in `env` with a revert commit.

    In a gated environment (approvals > 0) only a version the environment served through an
    approval can come back, and the commit carries a new signed attestation (kind rollback).
    With `tenants` (the caller's visible tenants; None: all) another tenant's model is not
    found, as a missing one is, and nothing is written.
    """
    if tenants is not None:
        model = _visible_ref(ws, store, model, tenants)
    with contextlib.suppress(NotFoundError):  # unknown: reported as not deployed below
        model = registered_name(store, model, layout_of(ws.deploy_repo))
    state = repo_state(ws.deploy_repo)
    layout = layout_of(state.repo)
    path = config_path(env, model, layout=layout)
    served = _log(state, path, None)
    if not served or served[0].version is None or served[0].text is None:
        raise DeployError(
            f"{model} is not deployed in {env} ({path} is not on {state.branch}); "
            "there is nothing to roll back"
        )
    current = served[0].version
    gated = is_gated(ws, env)
    if gated:
        served = [served[0], *approved_entries(ws, store, env, model, served, state.branch)]
    version, source = _target(served, current, to, model, env)
    model_id, tenant, row = _registered(store, model, version)
    if gated and source is None:
        raise DeployError(
            f"{env} never served {model} version {version} through an approved promotion, so "
            f"it cannot be rolled back to; promote it instead (`mw promote {model} --to {env}`) "
            "and have it approved"
        )
    text = (
        source.text
        if source and source.text
        else _config_text(ws, model, tenant, row, served[0].text)
    )
    origin = f"as of {source.commit[:10]}" if source else "from the registry"
    message = (
        f"rollback({env}): {model} {current} -> {version}\n\n"
        f"This reverts {path} to version {version} ({origin}).\n"
    )
    files = {path: text}
    if gated and source is not None:
        files[attestation_path(env, model, layout_of(state.repo))] = _rollback_attestation(
            ws, state, env, model, text, source.commit, actor
        )
    commit = _commit(state, path, files, message, actor)
    with store.session() as s:
        s.add(
            Deployment(
                model_id=model_id,
                env=env,
                version=version,
                commit=commit,
                artifact_digest=row.artifact_digest,
                kind="rollback",
                actor=actor,
            )
        )
    audit.record(
        store,
        [
            audit.event(
                "rollback",
                model,
                actor=actor,
                tenant=tenant,
                before={"env": env, "version": current},
                after={"env": env, "version": version, "commit": commit},
            )
        ],
    )
    return {"model": model, "env": env, "from": current, "to": version, "commit": commit}


def approved_entries(
    ws: Workspace, store: Store, env: str, model: str, served: list[Served], ref: str
) -> list[Served]:
    """The entries of `served` (newest first) where `env` served `model` through an approval.

    Proof is a valid attestation at that commit, or, for history from before attestations,
    the registry's record of a promotion merged as that very commit.
    """
    from modelworks.gitops.attest import approved_history

    ok = {c for c, _cfg in approved_history(ws, env, model, ref)}
    with store.session() as s:
        merged = set(
            s.scalars(
                select(PromotionRequest.merge_commit).where(
                    PromotionRequest.env == env, PromotionRequest.state == "merged"
                )
            )
        )
    return [e for e in served if e.version and (e.commit in ok or e.commit in merged)]


def _rollback_attestation(
    ws: Workspace, state: RepoState, env: str, model: str, text: str, source: str, actor: str
) -> str:
    """A signed attestation (kind rollback) carrying over who approved the version first."""
    import json

    from modelworks.gitops.attest import sign_attestation

    before = read_blobs(
        state.repo, [f"{source}:{attestation_path(env, model, layout_of(state.repo))}"]
    )
    try:
        first = json.loads(next(iter(before.values()), "{}"))
    except ValueError:
        first = {}
    return sign_attestation(
        ws,
        env=env,
        model=model,
        config_text=text,
        kind="rollback",
        promotion=first.get("promotion"),
        requested_by=first.get("requested_by"),
        approvers=list(first.get("approvers") or []),
        actor=actor,
    )
