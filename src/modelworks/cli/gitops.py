"""GitOps commands: promote, approve, reject, rollback, history, push, export and friends."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from modelworks.cli import emit_json
from modelworks.cli._common import (
    ActorOpt,
    JsonOpt,
    WorkspaceOpt,
    acting,
    actor,
    open_scoped,
    open_workspace,
)

export_app = typer.Typer(
    help="Write Argo CD or KServe manifests from the deploy repo, or a pipeline as KFP IR.",
    no_args_is_help=True,
)

RequestId = Annotated[int, typer.Argument(help="Promotion request id (see `mw promotions`).")]
EnvOpt = Annotated[str, typer.Option("--env", "-e", help="Environment.")]
STATE_STYLE = {"open": "yellow", "merged": "green", "rejected": "red", "closed": "dim"}


def promote_cmd(
    models: Annotated[list[str] | None, typer.Argument(help="Models to promote.")] = None,
    to: Annotated[str, typer.Option("--to", help="Target environment.")] = "prod",
    from_env: Annotated[str, typer.Option("--from", help="Source environment.")] = "test",
    all_changed: Annotated[
        bool, typer.Option("--all-changed", help="Every model whose source version differs.")
    ] = False,
    pipeline: Annotated[
        str | None, typer.Option("--pipeline", help="Models trained by this pipeline.")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="Models with label k=v (repeatable).")
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", help="Only this tenant's models (a request has one tenant)."),
    ] = None,
    workspace: WorkspaceOpt = None,
    as_user: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Open one promotion request (branch promote/<id>) for one or many models of a tenant."""
    from modelworks._console import console
    from modelworks.cli._remote import path, remote

    if (api := remote(as_user)) is not None:
        body = {"models": models or [], "to": to, "from": from_env, "all_changed": all_changed}
        body |= {"pipeline": pipeline, "labels": label or [], "tenant": tenant}
        req = api.post(path("promotions"), body)
        hint = approve_hint(None)
    else:
        from modelworks.gitops.promote import promote

        ws, store = open_workspace(workspace)
        who, tenants = acting(ws, store, as_user, "developer", f"promote to {to}")
        req = promote(
            ws,
            store,
            models or None,
            to=to,
            source=from_env,
            all_changed=all_changed,
            pipeline=pipeline,
            labels=label,
            actor=who,
            tenant=tenant,
            tenants=tenants,
        )
        hint = approve_hint(ws)
    if json_out:
        emit_json(req)
        return
    verb = "Opened and merged" if req["state"] == "merged" else "Opened"
    console.print(
        f"{verb} promotion request [bold]#{req['id']}[/bold] ({req['branch']}): {req['title']}",
        highlight=False,
    )
    _print_items(req["items"], limit=50)
    if req.get("unchanged"):
        console.print(f"  already served in {to}: {', '.join(req['unchanged'])}", highlight=False)
    if req["forge_url"]:
        console.print(f"  {req['forge_url']}", highlight=False)
    if req["state"] == "open":
        console.print(
            f"Needs {req['required_approvals']} approval(s): "
            f"[cyan]mw approve {req['id']}{hint}[/cyan]",
            highlight=False,
        )


def approve_hint(ws: Any) -> str:
    """How an approver names themselves: a token in token mode (or remote: `ws` None), --as in
    local mode."""
    if ws is None or ws.settings.auth.mode == "token":
        return " (with an approver's MW_TOKEN)"
    return " --as USER"


def _print_items(items: list[dict[str, Any]], limit: int | None = None) -> None:
    from rich.table import Table

    from modelworks._console import console
    from modelworks.gitops.promote import format_deltas

    table = Table(show_lines=False)
    for col in ("model", "from", "to", "metric deltas"):
        table.add_column(col)
    for item in items[:limit]:
        table.add_row(
            item["model"], item["from"] or "-", item["to"], format_deltas(item["metrics"])
        )
    console.print(table)
    if limit is not None and len(items) > limit:
        console.print(f"… and {len(items) - limit} more (mw promotion ID --json lists all)")


def promotions_cmd(
    state: Annotated[
        str | None, typer.Option("--state", help="open, merged, rejected or closed.")
    ] = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Promotion requests, newest first."""
    from rich.table import Table

    from modelworks._console import console
    from modelworks.cli._remote import path, remote

    if (api := remote()) is not None:
        rows = api.get(path("promotions"), {"state": state})["promotions"]
    else:
        from modelworks.gitops.promote import list_promotions

        _ws, store, tenants = open_scoped(workspace)
        rows = list_promotions(store, state, tenants)
    if json_out:
        emit_json({"promotions": rows})
        return
    table = Table(title=f"{len(rows)} promotion request(s)")
    for col in ("id", "env", "state", "models", "author", "approvals", "title", "created"):
        table.add_column(col)
    for r in rows:
        style = STATE_STYLE.get(r["state"], "white")
        table.add_row(
            str(r["id"]),
            r["env"],
            f"[{style}]{r['state']}[/]",
            str(r["models"]),
            r["author"],
            f"{len(r['approvals'])}/{r['required_approvals']}",
            r["title"],
            (r["created_at"] or "")[:19],
        )
    console.print(table)


def promotion_cmd(
    request_id: RequestId, workspace: WorkspaceOpt = None, json_out: JsonOpt = False
) -> None:
    """One promotion request with its table of metric deltas."""
    from modelworks.cli._remote import path, remote

    if (api := remote()) is not None:
        _show(api.get(path("promotions", request_id)), json_out)
        return
    from modelworks.gitops.promote import get_promotion

    _ws, store, tenants = open_scoped(workspace)
    _show(get_promotion(store, request_id, tenants), json_out)


def _show(req: dict[str, Any], json_out: bool) -> None:
    from modelworks._console import console

    if json_out:
        emit_json(req)
        return
    style = STATE_STYLE.get(req["state"], "white")
    console.print(
        f"[bold]#{req['id']}[/bold] {req['title']}  [{style}]{req['state']}[/]", highlight=False
    )
    console.print(
        f"  branch {req['branch']} (base {str(req['base_commit'])[:10]}, head "
        f"{str(req['head_commit'])[:10]})  by {req['author']}  {req['created_at']}",
        highlight=False,
    )
    console.print(
        f"  approvals {len(req['approvals'])}/{req['required_approvals']}: "
        f"{', '.join(req['approvals']) or 'none yet'}",
        highlight=False,
    )
    for d in req["decisions"]:
        if d["decision"] == "reject":
            console.print(f"  rejected by {d['actor']}: {d['comment']}", highlight=False)
    if req["merge_commit"]:
        console.print(f"  merged as {req['merge_commit'][:10]}", highlight=False)
    if req["forge_url"]:
        console.print(f"  {req['forge_url']}", highlight=False)
    _print_items(req["items"])


def approve_cmd(
    request_id: RequestId,
    comment: Annotated[
        str | None, typer.Option("--comment", "-m", help="A note kept with the approval.")
    ] = None,
    workspace: WorkspaceOpt = None,
    as_user: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Approve a promotion request; the last required approval merges it."""
    from modelworks._console import console
    from modelworks.cli._remote import path, remote

    if (api := remote(as_user)) is not None:
        req = api.post(path("promotions", request_id, "approve"), {"comment": comment})
    else:
        from modelworks.gitops.promote import approve

        ws, store = open_workspace(workspace)
        action = f"approve promotion request {request_id}"
        who, tenants = acting(ws, store, as_user, "approver", action)
        req = approve(ws, store, request_id, actor=who, comment=comment, tenants=tenants)
    if json_out:
        emit_json(req)
        return
    if req["state"] == "merged":
        where = f" as {req['merge_commit'][:10]}" if req["merge_commit"] else " on the forge"
        console.print(
            f"[green]Merged[/green] promotion request #{req['id']}{where}: "
            f"{req['models']} model(s) now in {req['env']}",
            highlight=False,
        )
    else:
        console.print(
            f"Approved #{req['id']} ({len(req['approvals'])}/{req['required_approvals']} "
            "approvals)",
            highlight=False,
        )


def reject_cmd(
    request_id: RequestId,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept with the request).")],
    workspace: WorkspaceOpt = None,
    as_user: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Reject a promotion request: it is closed and nothing is merged."""
    from modelworks._console import console
    from modelworks.cli._remote import path, remote

    if (api := remote(as_user)) is not None:
        req = api.post(path("promotions", request_id, "reject"), {"reason": reason})
    else:
        from modelworks.gitops.promote import reject

        ws, store = open_workspace(workspace)
        action = f"reject promotion request {request_id}"
        who, tenants = acting(ws, store, as_user, "approver", action)
        req = reject(ws, store, request_id, actor=who, reason=reason, tenants=tenants)
    if json_out:
        emit_json(req)
        return
    console.print(f"[red]Rejected[/red] promotion request #{req['id']}: {reason}", highlight=False)


def rollback_cmd(
    model: Annotated[str, typer.Argument(help="Model: TENANT/MODEL, or a bare name.")],
    env: EnvOpt = "prod",
    to: Annotated[
        str | None, typer.Option("--to", help="Version to put back (default: the previous one).")
    ] = None,
    workspace: WorkspaceOpt = None,
    as_user: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Put the previous (or named) version back, as a revert commit in the deploy repo."""
    from modelworks._console import console
    from modelworks.cli._remote import path, remote

    if (api := remote(as_user)) is not None:
        result = api.post(path("rollbacks"), {"model": model, "env": env, "to": to})
    else:
        from modelworks.gitops.rollback import rollback

        ws, store = open_workspace(workspace)
        gated = getattr(ws.settings.environments.get(env), "approvals", 0) > 0
        role = "approver" if gated else "developer"
        who, tenants = acting(ws, store, as_user, role, f"roll back {model} in {env}")
        result = rollback(ws, store, model, env=env, to=to, actor=who, tenants=tenants)
    if json_out:
        emit_json(result)
        return
    console.print(
        f"rollback({env}): {model} {result['from']} -> [bold]{result['to']}[/bold] "
        f"(commit {result['commit'][:10]})",
        highlight=False,
    )


def attest_cmd(
    env: EnvOpt = "prod",
    workspace: WorkspaceOpt = None,
    as_user: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Sign attestations for a gated env's configs that predate them, if the registry proves
    an approved promotion put them there (run once after upgrading; needs the signing key)."""
    from modelworks._console import console
    from modelworks.gitops.adopt import adopt

    ws, store = open_workspace(workspace)
    result = adopt(ws, store, env, actor=actor(ws, as_user, "admin", f"attest {env}"))
    if json_out:
        emit_json(result)
    else:
        for a in result["adopted"]:
            console.print(f"attested {a['model']} (promotion #{a['promotion']})", highlight=False)
        for u in result["unproven"]:
            console.print(f"[red]not proven[/red] {u['path']}: promote it again", highlight=False)
    if result["unproven"]:
        raise typer.Exit(1)


def history_cmd(
    model: Annotated[str, typer.Argument(help="Model: TENANT/MODEL, or a bare name.")],
    env: EnvOpt = "prod",
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", help="At most this many entries.")
    ] = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """What an environment served for a model, and when (from Git history)."""
    from rich.table import Table

    from modelworks._console import console
    from modelworks.gitops.rollback import history
    from modelworks.workspace import Workspace

    ws = Workspace.load(workspace)
    if ws.settings.auth.mode == "token":
        ws, store, tenants = open_scoped(workspace)
        rows = history(ws, model, env, limit, store=store, tenants=tenants)
    else:
        rows = history(ws, model, env, limit)
    if json_out:
        emit_json({"model": model, "env": env, "history": rows})
        return
    table = Table(title=f"{model} in {env}")
    for col in ("commit", "date", "author", "version", "message"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["commit"][:10], r["date"][:19], r["author"], r["version"] or "(removed)", r["message"]
        )
    console.print(table)


def push_cmd(
    models: Annotated[list[str] | None, typer.Argument(help="Only these models.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Re-check versions already pushed.")
    ] = False,
    workspace: WorkspaceOpt = None,
    as_user: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Push ModelCars (served and latest registered versions) to oci.registry."""
    from modelworks._console import console
    from modelworks.artifacts.publish import push_versions

    ws, store = open_workspace(workspace)
    rows = push_versions(ws, store, models or None, force=force, actor=actor(ws, as_user))
    failed = [r for r in rows if r["status"] == "failed"]
    if json_out:
        emit_json({"pushed": rows})
    else:
        for r in rows:
            style = {"pushed": "green", "up-to-date": "dim", "failed": "red"}[r["status"]]
            detail = (
                r["error"]
                if r["error"]
                else f"{r['uploaded']} blob(s) uploaded, {r['skipped']} present"
            )
            console.print(
                f"[{style}]{r['status']:>10}[/] {r['uri']}  {detail}",
                highlight=False,
                soft_wrap=True,
            )
        console.print(f"Push: {len(rows) - len(failed)} ok, {len(failed)} failed.")
    if failed:
        raise typer.Exit(1)


@export_app.command("argocd")
def export_argocd_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for appset-<env>.yaml files.")],
    repo_url: Annotated[
        str | None,
        typer.Option(
            "--repo-url", help="Deploy repo URL Argo CD clones (default: origin, else its path)."
        ),
    ] = None,
    revision: Annotated[
        str, typer.Option("--revision", help="Git revision Argo CD tracks.")
    ] = "HEAD",
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One Argo CD ApplicationSet per environment (auto-sync where auto_deploy is on)."""
    from rich.markup import escape

    from modelworks._console import console, err_console
    from modelworks.gitops.export import default_repo_url, export_argocd
    from modelworks.workspace import Workspace

    ws = Workspace.load(workspace)
    envs = ws.settings.environments
    warnings: list[str] = []
    with _warnings_to_stderr():
        if not repo_url:
            repo_url, fallback = default_repo_url(ws.deploy_repo)
            if fallback:
                err_console.print(f"[yellow]{escape(fallback)}[/]")
                warnings.append(fallback)
        paths = export_argocd(
            ws.deploy_repo,
            out,
            repo_url=repo_url,
            envs=list(envs),
            revision=revision,
            auto_sync={e: cfg.auto_deploy for e, cfg in envs.items()},
            warnings=warnings,
        )
    _report_written(paths, json_out, console, warnings)


@export_app.command("kserve")
def export_kserve_cmd(
    env: Annotated[str, typer.Option("--env", "-e", help="Environment to export.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for <model>.yaml files.")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One KServe InferenceService per model of an environment (ModelCar storageUri)."""
    from modelworks._console import console
    from modelworks.errors import ConfigError, did_you_mean
    from modelworks.gitops.export import export_kserve
    from modelworks.workspace import Workspace

    ws = Workspace.load(workspace)
    if env not in ws.settings.environments:
        envs = set(ws.settings.environments)
        raise ConfigError(
            f"environment {env!r} is not in modelworks.yaml (environments: "
            f"{', '.join(sorted(envs))})." + did_you_mean(env, envs)
        )
    oci = ws.settings.oci
    approved = approved_configs(ws, env)
    with _warnings_to_stderr():
        paths = export_kserve(
            ws.deploy_repo,
            env,
            out,
            registry=oci.registry,
            namespace=oci.namespace,
            configs=approved,
        )
    _report_written(paths, json_out, console)


@export_app.command("kfp")
def export_kfp_cmd(
    pipeline: Annotated[
        str, typer.Argument(help="Pipeline name (its current version), or NAME@VERSION.")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the IR YAML here, not to stdout.")
    ] = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Compile a pipeline (plain ones wrapped as lightweight components) to KFP IR YAML."""
    import sys

    from modelworks._console import console
    from modelworks.errors import ConfigError
    from modelworks.pipelines.kfp_compile import compile_folder
    from modelworks.workspace import Workspace

    ws = Workspace.load(workspace)
    name, _, version = pipeline.partition("@")
    ref = _pipeline_ref(ws, name, version or None)
    with _warnings_to_stderr():
        text = compile_folder(ref.source, ref.name, ref.version)
    if out is None:
        sys.stdout.write(text)
        return
    if out.is_dir():
        raise ConfigError(
            f"--out {out} is a folder; give the file to write (e.g. {out}/{name}.yaml)"
        )
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist")
    out.write_text(text)
    console.print(
        f"  wrote {out} (pipeline {ref.name} {ref.version})", highlight=False, soft_wrap=True
    )


def _pipeline_ref(ws: Any, name: str, version: str | None) -> Any:
    """The pipeline's current folder, or the recorded snapshot of NAME@VERSION."""
    from modelworks.pipelines.catalog import Catalog

    recorded: dict[tuple[str, str], tuple[str, str]] = {}
    if version is not None:
        from modelworks.plan import RegistryView
        from modelworks.registry.fastread import for_store, reading

        _ws, store = open_workspace(ws.root)
        with reading(for_store(store, owned=False)) as reader:
            recorded = RegistryView.read(reader).pipelines
    catalog = Catalog(ws.pipelines_dir, ws.state_dir / "pipelines", recorded)
    return catalog.resolve(name, version or catalog.current(name)[0])


def approved_configs(ws: Any, env: str) -> Any:
    """A gated env's approved configs at HEAD (refusals warned on stderr); None otherwise."""
    from rich.markup import escape

    from modelworks._console import err_console
    from modelworks.gitops.attest import approved_env, is_gated
    from modelworks.gitops.export import resolve_ref

    if not is_gated(ws, env):
        return None
    check = approved_env(ws, env, resolve_ref(ws.deploy_repo, "HEAD"))
    for r in check.refused:
        instead = f"exporting {r.fallback} instead" if r.fallback else "not exported"
        err_console.print(
            "[yellow]warning:[/yellow] "
            + escape(f"{r.path} (commit {r.commit[:10]}) is not approved: {r.reason}; {instead}"),
            highlight=False,
            soft_wrap=True,
        )
    return check.configs


def _warnings_to_stderr() -> Any:
    """Send what the library prints (warnings) to stderr, so stdout stays pure JSON."""
    import contextlib
    import sys

    return contextlib.redirect_stdout(sys.stderr)


def _report_written(
    paths: list[Path], json_out: bool, console: Any, warnings: list[str] | None = None
) -> None:
    if json_out:
        doc: dict[str, Any] = {"written": [str(p) for p in paths]}
        if warnings is not None:
            doc["warnings"] = warnings
        emit_json(doc)
        return
    for p in paths:
        console.print(f"  wrote {p}", highlight=False)
    console.print(f"{len(paths)} file(s) written.")


def register(app: typer.Typer) -> None:
    app.command("promote")(promote_cmd)
    app.command("promotions")(promotions_cmd)
    app.command("promotion")(promotion_cmd)
    app.command("approve")(approve_cmd)
    app.command("reject")(reject_cmd)
    app.command("rollback")(rollback_cmd)
    app.command("history")(history_cmd)
    app.command("attest")(attest_cmd)
    app.command("push")(push_cmd)
    app.add_typer(export_app, name="export")
