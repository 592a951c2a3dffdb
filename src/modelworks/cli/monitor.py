"""`mw monitor`: drift of served inputs against the training profile, stored as reports."""

from __future__ import annotations

from typing import Annotated

import typer

from modelworks.cli import emit_json
from modelworks.cli._common import JsonOpt, WorkspaceOpt, open_scoped


def monitor_cmd(
    models: Annotated[
        list[str] | None, typer.Argument(help="Only these models (default: all served).")
    ] = None,
    env: Annotated[
        str, typer.Option("--env", "-e", help="Environment whose served inputs to check.")
    ] = "test",
    window: Annotated[
        int, typer.Option("--window", help="Newest logged rows per model to compare.")
    ] = 10_000,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Compute, but store no report.")
    ] = False,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compare served inputs with each model's training profile (PSI, KS); exit 2 on drift."""
    from modelworks.monitor.run import monitor

    ws, store, tenants = open_scoped(workspace, role="developer")
    results = monitor(
        ws, store, env, models or None, window=window, record=not dry_run, tenants=tenants
    )
    if json_out:
        emit_json({"env": env, "models": [r.to_dict() for r in results]})
    else:
        _print(env, results)
    if any(r.drifted for r in results):
        raise typer.Exit(2)


def _print(env: str, results: list) -> None:  # type: ignore[type-arg]
    from rich.table import Table

    from modelworks._console import console

    table = Table(title=f"drift in {env}: {len(results)} model(s)")
    for col in (
        "model",
        "version",
        "samples",
        "score (max PSI)",
        "threshold",
        "drift",
        "action",
        "worst features",
    ):
        table.add_column(col)
    for r in results:
        worst = sorted(r.features, key=lambda f: -f["psi"])[:3]
        shown = ", ".join(f"{f['name']}={f['psi']:.2f}" for f in worst)
        if r.error:
            state, shown = "[red]error[/red]", r.error
        elif r.reason:
            state, shown = "[dim]n/a[/dim]", r.reason
        else:
            state = "[red]DRIFT[/red]" if r.drifted else "[green]ok[/green]"
        action = r.action + (" (requested)" if r.retrain_requested else "") if r.drifted else "-"
        table.add_row(
            r.model,
            r.version,
            str(r.samples),
            f"{r.score:.3f}",
            f"{r.threshold:g}",
            state,
            action,
            shown,
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("monitor")(monitor_cmd)
