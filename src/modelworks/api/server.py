"""`mw server`: the control-plane API alone under uvicorn (`mw up` serves it beside the rest).

In `auth.mode: local` the API acts as the local user without a token, so it binds to loopback
only; any other address is refused before anything listens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelworks.errors import ConfigError
from modelworks.serving.auth import is_loopback

if TYPE_CHECKING:
    from modelworks.controller.service import Endpoint
    from modelworks.workspace import Workspace


def check_bind(ws: Workspace, host: str) -> None:
    """ConfigError unless `host` is loopback or the workspace requires tokens."""
    if ws.settings.auth.mode == "local" and not is_loopback(host):
        raise ConfigError(
            f"--host {host}: auth.mode is local, so the control-plane API acts as the local "
            "user without a token and binds to loopback only (127.0.0.1, ::1, localhost); "
            "set auth.mode: token in modelworks.yaml to serve it on other addresses"
        )


def api_endpoint(ws: Workspace, host: str) -> list[Endpoint]:
    """The API as an endpoint of `mw up`, unless local auth on a non-loopback bind forbids it."""
    import logging

    from modelworks.api.app import create_app
    from modelworks.controller.service import Endpoint

    try:
        check_bind(ws, host)
    except ConfigError as exc:
        logging.getLogger("modelworks.controller").warning(
            "not serving the control-plane API: %s", exc
        )
        return []
    return [Endpoint("api", create_app(ws), ws.settings.server.port)]


def run_api_server(ws: Workspace, host: str = "127.0.0.1", port: int | None = None) -> None:
    """Serve the API on host:port (default `server.port`) until SIGINT/SIGTERM; uvicorn
    finishes in-flight requests before it exits."""

    from modelworks import _net
    from modelworks.api.app import create_app

    check_bind(ws, host)
    port = port or ws.settings.server.port
    _net.check_port(host, port, "server.port")
    app = create_app(ws)
    _net.serve(app, host, port, "the control-plane API")
