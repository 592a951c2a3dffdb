"""Commands of the assembly line: init, data add, plan, apply, status, show, runs, logs, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from modelworks.cli import emit_json
from modelworks.cli._common import (
    ActorOpt,
    JsonOpt,
    WorkspaceOpt,
    actor,
    open_plan_reader,
    open_reader,
    open_scoped,
    remote_client,
)

data_app = typer.Typer(help="Version datasets (DVC-compatible).", no_args_is_help=True)


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
    if (api := remote_client()) is not None:
        from modelworks.cli._remote import path, plan_view

        data = api.post(path("plan"), {"models": models or [], "allow_dirty": allow_dirty})
        p: Any = plan_view(data)
    else:
        p = _local_plan(workspace, models or None, allow_dirty)
    if json_out:
        emit_json(data if api is not None else p.to_dict())
    else:
        from modelworks._render import print_plan

        print_plan(p, show_unchanged)
    s = p.summary
    if detailed_exitcode:
        raise typer.Exit(1 if s["error"] else 2 if s["create"] + s["update"] else 0)
    if s["error"]:
        raise typer.Exit(1)


def _local_plan(workspace: Path | None, names: list[str] | None, allow_dirty: bool) -> Any:
    """The plan of this workspace as the caller may see it, through the leanest registry read
    that gives the same answer (see open_plan_reader)."""
    from modelworks._gc import gc_paused

    with gc_paused():  # imports and 9,000 specs: the collector's passes would free nothing
        return _plan_of(workspace, names, allow_dirty)


def _plan_of(workspace: Path | None, names: list[str] | None, allow_dirty: bool) -> Any:
    from modelworks.plan import plan

    lean = open_plan_reader(workspace)
    if lean is not None:
        from modelworks.registry.fastread import reading

        ws, reader = lean
        with reading(reader):
            return plan(ws, None, names, allow_dirty=allow_dirty, reader=reader)
    ws, store, tenants = open_scoped(workspace)  # a token sees its own tenant's models
    if tenants is None:  # all of them: plan directly (submit imports the whole apply path)
        return plan(ws, store, names, allow_dirty=allow_dirty)
    from modelworks.submit import plan_for

    return plan_for(ws, store, names, tenants, allow_dirty=allow_dirty)


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
    """Train, gate, package and register what changed; deploy passing versions to test.

    With MW_SERVER set, the control plane queues the runs and its controller trains them.
    """
    from modelworks.cli._remote import path, print_queued, remote

    if (api := remote(as_user)) is not None:
        queued = api.post(path("apply"), {"models": models or [], "allow_dirty": allow_dirty})
        if json_out:
            emit_json(queued)
        else:
            print_queued(queued)
        if queued["errors"]:
            raise typer.Exit(1)
        return
    from modelworks._render import ApplyProgress, print_apply
    from modelworks.apply import apply
    from modelworks.runs.executor import for_workspace

    ws, store, tenants = open_scoped(workspace)
    names = models or None
    if tenants is not None:  # a token applies only its own tenant's models
        from modelworks.submit import plan_for

        names = [m.name for m in plan_for(ws, store, names, tenants, allow_dirty=True).models]
        if not names:  # an empty list would mean every model
            from modelworks.errors import NotFoundError

            raise NotFoundError(f"no model specs of tenant {', '.join(sorted(tenants))}")
    ex = for_workspace(ws, workers)
    with ApplyProgress(json_out) as (on_start, on_result):
        result = apply(
            ws,
            store,
            names=names,
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
        print_apply(result)
    if not result.ok:
        raise typer.Exit(1)


def status_cmd(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """The fleet: each model's latest version, status, metrics and deployments."""
    if (api := remote_client()) is not None:
        from modelworks.cli._remote import path, status_order

        rows = status_order(api.pages(path("models"), {"limit": 500}))
    else:
        from modelworks._gc import gc_paused
        from modelworks.registry.fastread import reading, status

        with gc_paused():
            _ws, reader, tenants = open_reader(workspace)
            with reading(reader):
                rows = status(reader, tenants)
    if json_out:
        emit_json({"models": rows})
        return
    from modelworks._render import print_status

    print_status(rows)


def show_cmd(
    model: Annotated[str, typer.Argument(help="Model: TENANT/MODEL, or a bare name.")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One model: versions, metrics, lineage, artifact and deployments."""
    if (api := remote_client()) is not None:
        from modelworks.cli._remote import show_path

        info = api.get(show_path(model))
    else:
        from modelworks._gc import gc_paused
        from modelworks.registry.fastread import reading, show

        with gc_paused():
            _ws, reader, tenants = open_reader(workspace)
            with reading(reader):
                info = show(reader, model, tenants)
    if json_out:
        emit_json(info)
        return
    from modelworks._console import console

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
    from modelworks.cli._remote import path, remote

    if (api := remote()) is not None:
        params = {"model": model, "status": status_, "limit": limit}
        rows = api.get(path("runs"), params)["runs"]
    else:
        from modelworks.registry.queries import runs

        _ws, store, tenants = open_scoped(workspace)
        rows = runs(store, model=model, status=status_, limit=limit, tenants=tenants)
    if json_out:
        emit_json({"runs": rows})
        return
    table = Table()
    waits = any(r["reason"] for r in rows)
    cols = ("id", "model", "version", "status", "trigger", "attempts", "seconds", "error")
    for col in (*cols, "reason") if waits else cols:
        table.add_column(col)
    for r in rows:
        cells = [
            str(r["id"]),
            r["model"],
            r["version"],
            r["status"],
            r["trigger"],
            str(r["attempts"]),
            f"{r['duration']:.2f}" if r["duration"] else "-",
            (r["error"] or "")[:80],
        ]
        table.add_row(*cells, *([r["reason"] or ""] if waits else []))
    console.print(table)


def logs_cmd(
    model: Annotated[str, typer.Argument(help="Model: TENANT/MODEL, or a bare name.")],
    run: Annotated[
        int | None, typer.Option("--run", help="A run id (default: the latest).")
    ] = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The log of a model's latest (or given) training run."""
    import sys

    from modelworks.cli._remote import remote, remote_log

    if (api := remote()) is not None:
        info, text = remote_log(api, model, run)
    else:
        from modelworks.registry.queries import run_log

        _ws, store, tenants = open_scoped(workspace)
        info, text = run_log(store, model, run, tenants)
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
