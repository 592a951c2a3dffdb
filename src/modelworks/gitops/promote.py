"""Promotion requests: a branch `promote/<id>` in the deploy repo plus a registry record.

`promote` copies what the source env (test) serves into `deploy/<env>/<model>/config.yaml`
of the target env (prod) on a new branch, built with git plumbing in a temporary index
so the user's checkout is never touched, and records a PromotionRequest with a table of
metric deltas. `approve` counts approvals (never the author's); the last one merges the
branch into the deploy repo's main with a real merge commit, refusing when the same
files changed on main since the request was opened. `reject` closes it unmerged.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from filelock import FileLock
from sqlalchemy import select

from modelworks import _git
from modelworks.errors import (
    ConfigError,
    ConflictError,
    DeployError,
    GitError,
    NotFoundError,
    PermissionDeniedError,
    did_you_mean,
)
from modelworks.gitops.deploy import CONFIG_NAME, DEPLOY_DIR, config_path
from modelworks.registry import audit
from modelworks.registry.models import Approval, Deployment, Model, ModelVersion, PromotionRequest

if TYPE_CHECKING:
    from modelworks.gitops.forge import ForgeProvider
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

ZERO_SHA = "0" * 40
STATES = ("open", "merged", "rejected", "closed")
BODY_ROWS = 200  # rows of the delta table in a forge request body (GitHub caps bodies at 64 KiB)


# ---------------------------------------------------------------- deploy repo plumbing


def run_git(
    repo: Path,
    *args: str,
    input: bytes | None = None,
    author: str | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> str:
    """`git -C repo args` with an optional author identity and extra environment."""
    full = {**os.environ, **{k: v for k, v in _git._ENV.items() if k not in os.environ}}
    if author:
        full.update(GIT_AUTHOR_NAME=author, GIT_AUTHOR_EMAIL=f"{author}@modelworks.local")
    full.update(env or {})
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], input=input, capture_output=True, env=full
    )
    if check and proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip() or proc.stdout.decode().strip()
        raise GitError(f"git {' '.join(args[:3])} failed in {repo}: {msg}")
    return proc.stdout.decode(errors="replace")


@dataclass(frozen=True)
class RepoState:
    """The deploy repo's main branch (HEAD's), its tip, and whether a work tree has it out."""

    repo: Path
    branch: str
    tip: str
    worktree: bool


def repo_state(repo: Path) -> RepoState:
    """Where HEAD points in the deploy repo; a clear error when it is not usable."""
    if not repo.exists():
        raise DeployError(
            f"the deploy repository {repo} does not exist; check paths.deploy in modelworks.yaml"
        )
    bare, _, prefix = run_git(
        repo, "rev-parse", "--is-bare-repository", "--show-prefix", check=False
    ).partition("\n")
    if bare not in ("true", "false"):
        raise DeployError(f"{repo} is not a git repository; paths.deploy must name one")
    if prefix.strip():
        raise DeployError(
            f"{repo} is a folder inside another git repository, not a repository of its own; "
            "paths.deploy must name a repository root (run `git init` there)"
        )
    branch = run_git(repo, "symbolic-ref", "--short", "-q", "HEAD", check=False).strip()
    if not branch:
        raise DeployError(
            f"HEAD of the deploy repository {repo} is detached; check out its "
            "main branch (git switch main)"
        )
    tip = _git.head(repo, f"refs/heads/{branch}")
    if tip is None:
        raise DeployError(f"the deploy repository {repo} has no commits on {branch!r} yet")
    return RepoState(repo, branch, tip, bare == "false")


def tree_blobs(repo: Path, ref: str, prefix: str) -> dict[str, str]:
    """Blob sha of each file under `prefix` at `ref`, by path (one `git ls-tree`)."""
    out = run_git(repo, "ls-tree", "-r", "-z", ref, "--", prefix)
    blobs: dict[str, str] = {}
    for entry in out.split("\0"):
        if entry:
            meta, _, path = entry.partition("\t")
            blobs[path] = meta.split()[2]
    return blobs


def env_blobs(repo: Path, ref: str, env: str) -> dict[str, str]:
    """Blob sha of each model's config in `env` at `ref`, by model name."""
    prefix, suffix = f"{DEPLOY_DIR}/{env}/", f"/{CONFIG_NAME}"
    return {
        p[len(prefix) : -len(suffix)]: sha
        for p, sha in tree_blobs(repo, ref, prefix).items()
        if p.endswith(suffix)
    }


def read_blobs(repo: Path, shas: list[str]) -> dict[str, str]:
    """Contents of many blobs (or `rev:path` names) in one `git cat-file --batch`."""
    if not shas:
        return {}
    proc = subprocess.run(
        ["git", "-C", str(repo), "cat-file", "--batch"],
        input="".join(f"{s}\n" for s in shas).encode(),
        capture_output=True,
    )
    if proc.returncode != 0:
        raise GitError(f"git cat-file --batch failed in {repo}: {proc.stderr.decode().strip()}")
    out = proc.stdout
    result, pos = {}, 0
    for sha in shas:
        nl = out.index(b"\n", pos)
        header, pos = out[pos:nl].split(), nl + 1
        if len(header) < 3 or header[1] == b"missing":
            continue
        size = int(header[2])
        result[sha] = out[pos : pos + size].decode()
        pos += size + 1
    return result


def version_of(text: str) -> str | None:
    """The `version` key of a config.yaml text (None when unreadable)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return str(data["version"]) if isinstance(data, dict) and "version" in data else None


def commit_files(
    repo: Path, parent: str, files: Mapping[str, str], message: str, author: str
) -> str:
    """A commit on top of `parent` with `files` (path -> blob sha) changed; no work tree used."""
    with tempfile.TemporaryDirectory(prefix="mw-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        run_git(repo, "read-tree", parent, env=env)
        info = "".join(f"100644 {sha}\t{path}\0" for path, sha in files.items())
        run_git(repo, "update-index", "-z", "--index-info", input=info.encode(), env=env)
        tree = run_git(repo, "write-tree", env=env).strip()
    return run_git(
        repo, "commit-tree", tree, "-p", parent, input=message.encode(), author=author
    ).strip()


def write_blob(repo: Path, text: str) -> str:
    """Store `text` as a blob in the repo; return its sha."""
    return run_git(repo, "hash-object", "-w", "--stdin", input=text.encode()).strip()


def update_ref(repo: Path, ref: str, new: str, old: str, reason: str) -> None:
    """Move `ref` to `new` only if it is still at `old` (ZERO_SHA: only if it does not exist)."""
    run_git(repo, "update-ref", "-m", reason, ref, new, old, check=False)
    if _git.head(repo, ref) != new:
        raise ConflictError(f"{ref} in {repo} moved while modelworks was updating it; retry")


def dirty_paths(repo: Path, prefix: str) -> list[str]:
    """Uncommitted (or untracked) paths under `prefix` in the work tree."""
    out = run_git(repo, "status", "--porcelain", "-z", "--untracked-files=all", "--", prefix)
    return [e[3:] for e in out.split("\0") if len(e) > 3 and e[2] == " "]


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
    unknown = [m for m in models if m not in cands]
    if unknown:
        raise NotFoundError(
            f"model {unknown[0]!r} is not deployed in {source}; only what "
            f"{source} serves can be promoted." + did_you_mean(unknown[0], set(cands))
        )
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
    s: Any, chosen: list[Candidate], rows: dict[str, Model], env: str
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
                "path": config_path(env, c.name),
                "blob": c.blob,
                "metrics": deltas(new.metrics or {}, old.metrics if old else None),
            }
        )
    return items


# ---------------------------------------------------------------- records


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


def request_dict(
    req: PromotionRequest, approvals: list[Approval], *, items: bool = True
) -> dict[str, Any]:
    """A request as plain data (for --json, the API and the CLI)."""
    out = {
        "id": req.id,
        "env": req.env,
        "state": req.state,
        "title": req.title,
        "author": req.author,
        "tenant": req.tenant,
        "branch": req.branch,
        "base_commit": req.base_commit,
        "head_commit": req.head_commit,
        "merge_commit": req.merge_commit,
        "required_approvals": req.required_approvals,
        "approvals": [a.actor for a in approvals if a.decision == "approve"],
        "decisions": [
            {
                "actor": a.actor,
                "decision": a.decision,
                "comment": a.comment,
                "at": _iso(a.created_at),
            }
            for a in approvals
        ],
        "forge": req.forge,
        "forge_id": req.forge_id,
        "forge_url": req.forge_url,
        "models": len(req.items or []),
        "created_at": _iso(req.created_at),
        "closed_at": _iso(req.closed_at),
    }
    if items:
        out["items"] = [
            {k: v for k, v in i.items() if k not in ("model_id", "blob")} for i in req.items or []
        ]
    return out


def _get(s: Any, request_id: int) -> PromotionRequest:
    req: PromotionRequest | None = s.get(PromotionRequest, int(request_id))
    if req is None:
        raise NotFoundError(f"no promotion request {request_id}; list them with `mw promotions`")
    return req


def _approvals(s: Any, request_id: int) -> list[Approval]:
    return list(
        s.scalars(select(Approval).where(Approval.request_id == request_id).order_by(Approval.id))
    )


def list_promotions(store: Store, state: str | None = None) -> list[dict[str, Any]]:
    """Promotion requests, newest first (without their item tables)."""
    if state and state not in STATES:
        raise ConfigError(f"unknown request state {state!r}; expected one of {', '.join(STATES)}")
    with store.session() as s:
        q = select(PromotionRequest).order_by(PromotionRequest.id.desc())
        if state:
            q = q.where(PromotionRequest.state == state)
        reqs = list(s.scalars(q))
        by_req: dict[int, list[Approval]] = {}
        for a in s.scalars(select(Approval).order_by(Approval.id)):
            by_req.setdefault(a.request_id, []).append(a)
        return [request_dict(r, by_req.get(r.id, []), items=False) for r in reqs]


def get_promotion(store: Store, request_id: int) -> dict[str, Any]:
    """One promotion request with its delta table."""
    with store.session() as s:
        return request_dict(_get(s, request_id), _approvals(s, request_id))


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


def provider_for(ws: Workspace, environ: Mapping[str, str] | None = None) -> ForgeProvider:
    """The forge provider the workspace's `forge` settings ask for."""
    from modelworks.gitops.forge import provider_from_settings

    return provider_from_settings(
        ws.settings.forge.model_dump(),
        os.environ if environ is None else environ,
        state_dir=ws.state_dir,
    )


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
) -> dict[str, Any]:
    """Open one promotion request (branch promote/<id> + record) for the selected models.

    Select by names, `all_changed`, `pipeline` or `labels` (k=v); only models whose
    version in `source` differs from what `to` serves are included. An env needing no
    approvals is merged at once.
    """
    required = _env_settings(ws, to, source)
    if not (models or all_changed or pipeline or labels):
        raise ConfigError(
            "name the models to promote, or pass --all-changed, --pipeline or --label"
        )
    wanted_labels = parse_labels(labels)
    state = repo_state(ws.deploy_repo)
    cands = _candidates(state.repo, state.tip, source, to)
    provider = provider_for(ws, environ)
    with store.session() as s:
        rows = {m.name: m for m in s.scalars(select(Model))}
        chosen = _select(cands, models or [], all_changed, pipeline, wanted_labels, rows, source)
        if not chosen:
            raise DeployError(
                f"nothing to promote: {to} already serves what {source} serves "
                "for the selected models"
            )
        items = _items(s, chosen, rows, to)
        req = _open_record(s, items, to, source, actor, required, state, provider)
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
) -> PromotionRequest:
    tenants = {i["tenant"] for i in items}
    req = PromotionRequest(
        env=env,
        branch="",
        base_commit=state.tip,
        author=actor,
        tenant=tenants.pop() if len(tenants) == 1 else "default",
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


# ---------------------------------------------------------------- deciding


def _lock(ws: Workspace) -> FileLock:
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(ws.state_dir / "promotions.lock"))


def _require_open(req: PromotionRequest) -> None:
    if req.state != "open":
        raise ConflictError(
            f"promotion request {req.id} is {req.state}; only an open request "
            "can be approved or rejected"
        )


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


def merge_branch(state: RepoState, branch: str, message: str, actor: str) -> str:
    """Merge `branch` into main with a real merge commit, built with plumbing.

    When main is checked out, the index and work tree move with it (`git read-tree -m -u`,
    a two-tree switch): files the merge does not touch keep their staged or unstaged
    edits, and a local edit to a file the merge changes stops it before anything moves.
    """
    out = run_git(
        state.repo, "merge-tree", "--write-tree", "--no-messages", state.tip, branch, check=False
    )
    tree = out.split("\n", 1)[0].strip()
    if len(out.splitlines()) > 1 or not tree:
        raise ConflictError(f"{branch} conflicts with {state.branch}; open a new request")
    commit = run_git(
        state.repo,
        "commit-tree",
        tree,
        "-p",
        state.tip,
        "-p",
        branch,
        input=message.encode(),
        author=actor,
    ).strip()
    advance(state, commit, f"mw: merge {branch}")
    return commit


def advance(state: RepoState, new: str, reason: str) -> None:
    """Move main to commit `new` (work tree and index too when main is checked out there)."""
    if state.worktree:
        switch_worktree(state, state.tip, new)
    try:
        update_ref(state.repo, f"refs/heads/{state.branch}", new, state.tip, reason)
    except ConflictError:
        if state.worktree:
            switch_worktree(state, new, state.tip)
        raise


def switch_worktree(state: RepoState, old: str, new: str) -> None:
    """Move the index and work tree from commit `old` to `new`, keeping unrelated local edits."""
    try:
        run_git(state.repo, "read-tree", "-m", "-u", old, new)
    except GitError as exc:
        raise DeployError(
            f"cannot update the work tree of {state.repo}: {exc}; commit or discard the local "
            "changes it names, then try again"
        ) from None


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
