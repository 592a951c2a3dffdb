"""`mw server`: the control-plane API (and later the UI) alone."""

from __future__ import annotations

from typing import Annotated

import typer

from modelworks.cli._common import WorkspaceOpt


def server_cmd(
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option("--port", "-p", min=1, max=65535, help="Port (default: server.port)."),
    ] = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Serve the control-plane REST API (/api/v1, OpenAPI at /openapi.json)."""
    from modelworks.api.server import run_api_server
    from modelworks.workspace import Workspace

    run_api_server(Workspace.load(workspace), host=host, port=port)


def register(app: typer.Typer) -> None:
    app.command("server")(server_cmd)
