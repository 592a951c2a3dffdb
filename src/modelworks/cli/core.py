"""Commands of the assembly line: init, data add, plan, apply, status, show, runs, logs, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from modelworks.cli import emit_json
from modelworks.cli._common import ActorOpt, JsonOpt, WorkspaceOpt, actor, open_workspace

data_app = typer.Typer(help="Version datasets (DVC-compatible).", no_args_is_help=True)

ACTION_STYLE = {"create": "green", "update": "yellow", "unchanged": "dim", "error": "red"}


def init_cmd(
    directory: Annotated[Path, typer.Argument(help="Folder for the new workspace.")] = Path("."),
    example: Annotated[
        bool, typer.Option("--example", help="Add a small working example fleet.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Create a workspace: a git repo with modelworks.yaml, models/, pipelines/, data/, deploy/."""
    from modelworks._console import console
    from modelworks.init import init

    ws = init(directory, example=example)
    if json_out:
        emit_json({"workspace": str(ws.root), "example": example})
        return
    console.print(f"Initialized modelworks workspace in [bold]{ws.root}[/bold]")
    console.print(f"Next: [cyan]cd {directory} && mw plan && mw apply[/cyan]")


@data_app.command("add")
def data_add(
    path: Annotated[Path, typer.Argument(help="The data file to version.")],
    no_update_specs: Annotated[
        bool, typer.Option("--no-update-specs", help="Do not bump specs.")
    ] = False,
    workspace: WorkspaceOpt = None,
    as_user: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Version a data file: md5 into the cache, a .dvc pointer, bump and commit its specs."""
    from modelworks._console import console
    from modelworks.data.add import add
    from modelworks.workspace import Workspace

    ws = Workspace.load(workspace)
    v = add(ws, path, update_specs=not no_update_specs, actor=actor(ws, as_user))
    if json_out:
        emit_json(v.to_dict())
        return
    console.print(
        f"{v.dataset}: {(v.previous or 'new')[:8]} -> [bold]{v.md5[:8]}[/bold] ({v.size} bytes)"
    )
    for p in v.bumped:
        console.print(f"  bumped {p}")
    if v.commit:
        console.print(f"  committed {v.commit[:10]}")


AllowDirtyOpt = Annotated[
    bool,
    typer.Option(
        "--allow-dirty",
        help="Also train uncommitted specs, pipelines and pointers; their versions are marked "
        "dirty and are never deployed or promoted.",
    ),
]


def plan_cmd(
    models: Annotated[list[str] | None, typer.Argument(help="Only these models.")] = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 0 nothing to do, 2 changes, 1 errors.")
    ] = False,
    show_unchanged: Annotated[
        bool, typer.Option("--all", help="List unchanged models too.")
    ] = False,
    allow_dirty: AllowDirtyOpt = False,
) -> None:
    """Show what apply would train and why (a diff of fingerprints against the registry)."""
    from modelworks.plan import plan

    ws, store = open_workspace(workspace)
    p = plan(ws, store, models or None, allow_dirty=allow_dirty)
    if json_out:
        emit_json(p.to_dict())
    else:
        _print_plan(p, show_unchanged)
    s = p.summary
    if detailed_exitcode:
        raise typer.Exit(1 if s["error"] else 2 if s["create"] + s["update"] else 0)
    if s["error"]:
        raise typer.Exit(1)


def _print_plan(p: Any, show_unchanged: bool) -> None:
    from rich.markup import escape

    from modelworks._console import console

    for m in p.models:
        if m.action == "unchanged" and not show_unchanged:
            continue
        style = ACTION_STYLE[m.action]
        version = f" {m.version}" if m.version else ""
        console.print(
            f"[{style}]{m.action:>9}[/{style}] [bold]{escape(m.name)}[/bold]{version}",
            highlight=False,
        )
        for reason in m.reasons:
            console.print(f"           {escape(reason)}", highlight=False, soft_wrap=True)
    s = p.summary
    console.print(
        f"Plan: [green]{s['create']} to create[/green], [yellow]{s['update']} to update[/yellow], "
        f"{s['unchanged']} unchanged, [red]{s['error']} error(s)[/red]."
    )


def apply_cmd(
    models: Annotated[list[str] | None, typer.Argument(help="Only these models.")] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", "-j", help="Worker processes (default: cores).")
    ] = None,
    wait: Annotated[
        float, typer.Option("--wait", help="Seconds to wait for another apply's lock.")
    ] = 0,
    workspace: WorkspaceOpt = None,
    as_user: ActorOpt = None,
    json_out: JsonOpt = False,
    allow_dirty: AllowDirtyOpt = False,
) -> None:
    """Train, gate, package and register what changed; deploy passing versions to test."""
    from modelworks.apply import apply
    from modelworks.runs.executor import for_workspace

    ws, store = open_workspace(workspace)
    ex = for_workspace(ws, workers)
    with _progress(json_out) as (on_start, on_result):
        result = apply(
            ws,
            store,
            names=models or None,
            executor=ex,
            actor=actor(ws, as_user, "developer", "apply"),
            wait=wait,
            allow_dirty=allow_dirty,
            on_start=on_start,
            on_result=on_result,
        )
    if json_out:
        emit_json(result.to_dict())
    else:
        _print_apply(result)
    if not result.ok:
        raise typer.Exit(1)


class _progress:
    """A Rich progress bar on stderr fed by apply's callbacks (silent with --json)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> tuple[Any, Any]:
        return self.start, self.advance

    def start(self, total: int) -> None:
        if self.quiet:
            return
        if self.progress is not None:  # retries after a backoff add to the total
            self.progress.update(self.task, total=self.progress.tasks[0].total + total)
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        from modelworks._console import err_console

        self.progress = Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=err_console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("", total=total)

    def advance(self, result: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.update(
                self.task, advance=1, description=f"{result['model']} {result['status']}"
            )

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def _print_apply(result: Any) -> None:
    from rich.markup import escape

    from modelworks._console import console

    # Names, reasons and errors come from specs and pipeline code: print them, never parse them.
    for t in result.trained:
        metrics = ", ".join(f"{k}={v:.3g}" for k, v in sorted(t["metrics"].items()))
        dirty = "  [yellow](dirty: not deployed, not promotable)[/yellow]" if t.get("dirty") else ""
        console.print(
            f"[green]  trained[/green] {t['name']} {t['version']}  {metrics}{dirty}",
            highlight=False,
        )
    for g in result.gated:
        console.print(
            f"[yellow]    gated[/yellow] {g['name']} {g['version']}: "
            + escape("; ".join(g["reasons"])),
            highlight=False,
        )
    for r in result.rejected:
        console.print(
            f"[red] rejected[/red] {r['name']} {r['version']}: {escape(str(r['reason']))}",
            highlight=False,
            soft_wrap=True,
        )
    for f in result.failed:
        console.print(
            f"[red]   failed[/red] {f['name']}: {escape(str(f['error']))}",
            highlight=False,
            soft_wrap=True,
        )
    for e in result.errors:
        console.print(
            f"[red]    error[/red] {e['name']}: {escape(str(e['error']))}",
            highlight=False,
            soft_wrap=True,
        )
    d = result.to_dict()["summary"]
    console.print(
        f"Apply: {d['trained']} trained, {d['gated']} gated, {d['rejected']} rejected, "
        f"{d['failed']} failed, "
        f"{d['errors']} error(s), {d['skipped']} unchanged, {d['deployed']} deployed"
        + (f" (commit {result.commit[:10]})" if result.commit else "")
        + f" in {result.seconds:.1f}s."
    )


def status_cmd(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """The fleet: each model's latest version, status, metrics and deployments."""
    from modelworks.registry.queries import status

    _ws, store = open_workspace(workspace)
    rows = status(store)
    if json_out:
        emit_json({"models": rows})
        return
    print_status(rows)


def print_status(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from modelworks._console import console

    table = Table(title=f"{len(rows)} models", show_lines=False)
    for col in ("model", "pipeline", "version", "status", "metrics", "test", "prod"):
        table.add_column(col)
    style = {"registered": "green", "gated": "yellow", "rejected": "red"}
    for r in rows:
        metrics = ", ".join(f"{k}={v:.3g}" for k, v in sorted(r["metrics"].items())[:3])
        st = r["status"] or (r["last_run"] or {}).get("status") or "-"
        table.add_row(
            r["name"],
            r["pipeline"] or "-",
            r["version"] or "-",
            f"[{style.get(st, 'red')}]{st}[/]",
            metrics,
            r["deployed"].get("test", "-"),
            r["deployed"].get("prod", "-"),
        )
    console.print(table)


def show_cmd(
    model: Annotated[str, typer.Argument(help="Model name.")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One model: versions, metrics, lineage, artifact and deployments."""
    from modelworks._console import console
    from modelworks.registry.queries import show

    _ws, store = open_workspace(workspace)
    info = show(store, model)
    if json_out:
        emit_json(info)
        return
    console.print(
        f"[bold]{info['name']}[/bold] (tenant {info['tenant']}, pipeline {info['pipeline']})"
    )
    if info["artifact"]:
        a = info["artifact"]
        console.print(f"  artifact  {a['skopeo']}  {a['digest']}", highlight=False)
        console.print(f"  signed    {a.get('signed')}, scan {a.get('scan')}", highlight=False)
    sbom = info.get("sbom") or {}
    if sbom.get("components") is not None:
        keys = ", ".join(f"{k} {v}" for k, v in list((sbom.get("key_packages") or {}).items())[:4])
        console.print(
            f"  sbom      {sbom.get('format')} {sbom.get('spec_version')}, "
            f"{sbom['components']} components ({keys})",
            highlight=False,
        )
    elif sbom.get("error"):
        console.print(f"  sbom      unreadable: {sbom['error']}", style="red", highlight=False)
    for env, d in sorted(info["deployments"].items()):
        console.print(f"  {env:<8}  {d['version']} ({d['kind']} by {d['actor']}, {d['at']})")
    for v in info["versions"]:
        metrics = ", ".join(f"{k}={val:.3g}" for k, val in sorted(v["metrics"].items()))
        lin = v["lineage"]
        console.print(f"  {v['version']}  {v['status']:<10} {metrics}", highlight=False)
        console.print(
            f"             data {str(lin.get('data_hash'))[:8]}"
            f"  pipeline {lin.get('pipeline_version')}"
            + (
                "  DIRTY (uncommitted inputs)"
                if lin.get("dirty")
                else f"  commit {str(lin.get('spec_commit'))[:10]}"
            ),
            style="dim",
            highlight=False,
        )
        if v["reason"]:
            console.print(
                f"             {v['reason']}", style="yellow", highlight=False, markup=False
            )


def runs_cmd(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only this model.")] = None,
    status_: Annotated[
        str | None, typer.Option("--status", help="Only runs in this status.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many.")] = 50,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Training runs, newest first."""
    from rich.table import Table

    from modelworks._console import console
    from modelworks.registry.queries import runs

    _ws, store = open_workspace(workspace)
    rows = runs(store, model=model, status=status_, limit=limit)
    if json_out:
        emit_json({"runs": rows})
        return
    table = Table()
    for col in ("id", "model", "version", "status", "trigger", "attempts", "seconds", "error"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["model"],
            r["version"],
            r["status"],
            r["trigger"],
            str(r["attempts"]),
            f"{r['duration']:.2f}" if r["duration"] else "-",
            (r["error"] or "")[:80],
        )
    console.print(table)


def logs_cmd(
    model: Annotated[str, typer.Argument(help="Model name.")],
    run: Annotated[
        int | None, typer.Option("--run", help="A run id (default: the latest).")
    ] = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The log of a model's latest (or given) training run."""
    import sys

    from modelworks.registry.queries import run_log

    _ws, store = open_workspace(workspace)
    info, text = run_log(store, model, run)
    if json_out:
        emit_json({"run": info, "log": text})
        return
    sys.stdout.write(text)


def demo_cmd(
    directory: Annotated[
        Path, typer.Argument(help="Folder for the demo workspace (must not exist).")
    ] = Path("demo-fleet"),
    workers: Annotated[
        int | None, typer.Option("--workers", "-j", help="Worker processes.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Build a demo fleet of 62 models, run the whole line, then retrain after a data change."""
    from modelworks.demo import run_demo

    summary = run_demo(directory, workers=workers, quiet=json_out)
    if json_out:
        emit_json(summary)


def register(app: typer.Typer) -> None:
    app.command("init")(init_cmd)
    app.add_typer(data_app, name="data")
    app.command("plan")(plan_cmd)
    app.command("apply")(apply_cmd)
    app.command("status")(status_cmd)
    app.command("show")(show_cmd)
    app.command("runs")(runs_cmd)
    app.command("logs")(logs_cmd)
    app.command("demo")(demo_cmd)
