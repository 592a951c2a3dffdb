"""`mw fsck [--repair]`: registry vs OCI store vs Git, and rebuilding a lost registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from modelworks import _git
from modelworks.cli import emit_json
from modelworks.cli._common import ActorOpt, JsonOpt, WorkspaceOpt, cli_token, identity_for

if TYPE_CHECKING:
    from modelworks.registry.fsck import Report


def fsck_cmd(
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Rebuild models, versions and deployments from the OCI store and Git.",
        ),
    ] = False,
    workspace: WorkspaceOpt = None,
    as_user: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Report where the registry, the OCI store and Git disagree (exit 1 on any)."""
    from modelworks.registry.fsck import check, registry_state
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

    ws = Workspace.load(workspace)
    new = registry_state(ws) is not None
    if repair:
        from modelworks.registry.repair import repair as rebuild

        store = Store(ws.registry_url) if not new else None
        if store is not None:
            user = identity_for(ws, store, cli_token(), as_user, "admin", "repair").user
        else:  # a lost registry has no tokens to check: whoever can write .mw/ rebuilds it
            user = as_user or _git.user_name(ws.root)
        # No anchor advancer: the signed anchor keeps the evidence of the history that was lost.
        report = rebuild(ws, store or Store(ws.registry_url), user)
    else:
        report = check(ws, None if new else Store(ws.registry_url))
    if json_out:
        emit_json(report.to_dict())
    else:
        _print(report)
    if not report.ok:
        raise typer.Exit(1)


def _print(report: Report) -> None:
    from rich.markup import escape

    from modelworks._console import console

    if report.repaired:
        done = ", ".join(f"{n} {what}" for what, n in report.repaired.items())
        console.print(f"[green]rebuilt[/green] {escape(done)}", highlight=False)
    for item in report.lost:
        console.print(f"[yellow]lost[/yellow] {escape(item)}", highlight=False, soft_wrap=True)
    for p in report.problems:
        console.print(f"[red]{p.kind}[/red] {escape(p.detail)}", highlight=False, soft_wrap=True)
    if report.ok:
        console.print(f"{escape(report.registry)}, the OCI store and Git agree.", highlight=False)
    else:
        console.print(
            f"{len(report.problems)} disagreement(s); `mw fsck --repair` rebuilds what the "
            "OCI store and Git still hold.",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    app.command("fsck")(fsck_cmd)
