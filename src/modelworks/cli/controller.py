"""`mw controller` (the continuous loop) and `mw up` (the whole platform in one process)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from modelworks.cli import emit_json
from modelworks.cli._common import JsonOpt, WorkspaceOpt, open_workspace

if TYPE_CHECKING:
    from modelworks.controller import Controller

IntervalOpt = Annotated[
    float | None,
    typer.Option(
        "--interval", help="Seconds between repository checks (default: controller.poll_interval)."
    ),
]
MonitorOpt = Annotated[
    float | None,
    typer.Option(
        "--monitor-interval", help="Seconds between drift monitoring passes (default: off)."
    ),
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", "-j", help="Worker processes (default: cores).")
]
HostOpt = Annotated[str, typer.Option("--host", help="Address the HTTP endpoints bind.")]


def _controller(
    workspace: object,
    workers: int | None,
    monitor_interval: float | None,
    lock_wait: float,
    notify: list[str] | None = None,
) -> Controller:
    from modelworks.controller import Controller

    ws, store = open_workspace(workspace)  # type: ignore[arg-type]
    hooks = [_notifier(url) for url in notify or []]
    return Controller(
        ws,
        store,
        workers=workers,
        monitor_interval=monitor_interval,
        lock_wait=lock_wait,
        on_deploy=hooks,
    )


def _notifier(url: str):  # type: ignore[no-untyped-def]
    """POST <server>/admin/reconcile after a deploy, so a separate `mw serve` reloads now
    (with MW_TOKEN as the bearer token, for a server in token auth mode: it needs admin)."""
    import os

    import httpx

    token = os.environ.get("MW_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    def notify() -> None:
        resp = httpx.post(url.rstrip("/") + "/admin/reconcile", headers=headers, timeout=30)
        resp.raise_for_status()

    return notify


def controller_cmd(
    interval: IntervalOpt = None,
    monitor_interval: MonitorOpt = None,
    workers: WorkersOpt = None,
    once: Annotated[bool, typer.Option("--once", help="Run one reconcile pass and exit.")] = False,
    host: HostOpt = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option("--port", "-p", help="Webhook port (default: controller.port).")
    ] = None,
    no_http: Annotated[
        bool, typer.Option("--no-http", help="Do not serve the webhook endpoints.")
    ] = False,
    notify: Annotated[
        list[str] | None,
        typer.Option("--notify", help="A `mw serve` URL to reconcile after deploys (repeatable)."),
    ] = None,
    lock_wait: Annotated[
        float,
        typer.Option("--lock-wait", help="Seconds to wait for a user's `mw apply` each tick."),
    ] = 5.0,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Keep the workspace reconciled: watch Git, data folders, schedules, drift; apply, deploy."""
    from modelworks._console import console
    from modelworks.controller.service import run_controller, setup_logging

    ctl = _controller(workspace, workers, monitor_interval, lock_wait, notify)
    if once:
        with ctl.exclusive():
            report = ctl.tick()
        if json_out:
            emit_json(report.to_dict())
        else:
            _print_tick(report.to_dict())
        if report.errors:
            raise typer.Exit(1)
        return
    setup_logging()
    console.print(
        f"controller watching [bold]{ctl.ws.root}[/bold] every "
        f"{interval or ctl.ws.settings.controller.poll_interval:g}s (Ctrl-C stops)",
        highlight=False,
    )
    run_controller(ctl, host=host, port=port, interval=interval, http=not no_http)


def _print_tick(t: dict) -> None:  # type: ignore[type-arg]
    from modelworks._console import console

    for c in t["changes"]:
        console.print(
            f"  {c['repo']}: {(c['old'] or 'new')[:10]} -> {c['new'][:10]} "
            f"({', '.join(c['parts'])})",
            highlight=False,
        )
    if t["data"]:
        console.print(f"  versioned {len(t['data']['files'])} watched data file(s)")
    for a in t["applied"]:
        console.print(
            f"  apply ({a['trigger']}): {a['trained']} trained, {a['gated']} gated, "
            f"{a['failed']} failed, {a['deployed']} deployed",
            highlight=False,
        )
    for n in t["noops"]:
        console.print(
            f"  {n['name']}: already at the newest data ({n['version']}), nothing to train"
        )
    for e in t["errors"]:
        console.print(f"  [red]error[/red] {e}", highlight=False, soft_wrap=True)
    console.print(f"Controller pass done in {t['seconds']:.1f}s.")


def up_cmd(
    interval: IntervalOpt = None,
    monitor_interval: Annotated[
        float | None,
        typer.Option("--monitor-interval", help="Seconds between drift monitoring passes."),
    ] = 300.0,
    workers: WorkersOpt = None,
    host: HostOpt = "127.0.0.1",
    workspace: WorkspaceOpt = None,
) -> None:
    """Run the platform: the controller, an inference server per environment, the HTTP endpoints."""
    from modelworks._console import console
    from modelworks.api.server import api_endpoint
    from modelworks.controller.service import setup_logging, up

    ctl = _controller(workspace, workers, monitor_interval, 5.0)
    setup_logging()

    def ready(endpoints: list) -> None:  # type: ignore[type-arg]
        for e in endpoints:
            console.print(f"  {e.name:<14} http://{host}:{e.port}", highlight=False)
        console.print("mw up: ready (Ctrl-C stops everything)")

    console.print(f"mw up: [bold]{ctl.ws.root}[/bold]", highlight=False)
    up(ctl, host=host, interval=interval, on_ready=ready, extra=api_endpoint(ctl.ws, host))
    console.print("mw up: stopped")


def register(app: typer.Typer) -> None:
    app.command("controller")(controller_cmd)
    app.command("up")(up_cmd)
