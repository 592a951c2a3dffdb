"""`create_app(ws)`: the control-plane API under `/api/v1`, OpenAPI at `/openapi.json`.

Each resource is a router module in `modelworks.api.routers`, listed in ROUTERS; an endpoint
is a thin adapter over the function the CLI calls for the same command and returns the same
JSON the CLI prints with `--json`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fastapi import FastAPI

from modelworks import __version__
from modelworks.api.errors import ERROR_SCHEMA, install
from modelworks.api.limits import ApiBodyLimit
from modelworks.serving.auth import TokenCache, lazy_store
from modelworks.serving.http import JSON

if TYPE_CHECKING:
    from modelworks.workspace import Workspace

PREFIX = "/api/v1"
# Router modules under modelworks.api.routers, each exposing `router` (an APIRouter).
ROUTERS = (
    "whoami",
    "tenants",
    "models",
    "runs",
    "drift",
    "audit",
    "tokens",
    "plan",
    "promotions",
    "rollbacks",
)
ERROR_RESPONSE = {"description": "An error", "content": {JSON: {"schema": ERROR_SCHEMA}}}


def create_app(ws: Workspace) -> FastAPI:
    """The API app for `ws` (auth from `auth.mode`; the caller picks the bind address)."""
    app = FastAPI(
        title="modelworks control plane",
        version=__version__,
        openapi_url="/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        responses={"default": ERROR_RESPONSE},
    )
    app.state.ws = ws
    app.state.store = lazy_store(ws)
    app.state.tokens = TokenCache(ws.settings.serving.token_cache_seconds)
    install(app)
    limit = ws.settings.server.max_body_bytes
    app.add_middleware(ApiBodyLimit, limit, "server.max_body_bytes")
    for name in ROUTERS:
        module = importlib.import_module(f"modelworks.api.routers.{name}")
        app.include_router(module.router, prefix=PREFIX)
    return app
