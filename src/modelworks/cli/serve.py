"""`mw serve`: the embedded Open Inference Protocol server for one environment."""

from __future__ import annotations

from typing import Annotated

import typer

from modelworks.cli._common import WorkspaceOpt


def serve_cmd(
    env: Annotated[str, typer.Option("--env", "-e", help="Environment to serve.")] = "test",
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option("--port", "-p", help="Port (default: serving.port).")
    ] = None,
    ref: Annotated[
        str, typer.Option("--ref", help="Deploy repo ref to serve (re-read on each poll).")
    ] = "HEAD",
    max_memory: Annotated[
        str | None, typer.Option("--max-memory", help="Budget of loaded models, e.g. 512MiB.")
    ] = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Serve every model deployed in ENV (KServe v2 REST), reconciling from Git."""
    from modelworks.serving import parse_size, run_server
    from modelworks.workspace import Workspace

    ws = Workspace.load(workspace)
    budget = parse_size(max_memory) if max_memory else None
    run_server(
        ws, env, host=host, port=port or ws.settings.serving.port, ref=ref, max_memory=budget
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
