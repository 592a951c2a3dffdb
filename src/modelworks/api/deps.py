"""What every endpoint depends on: the workspace, its registry, and who is calling.

In `auth.mode: token` the caller is the bearer token's (or OIDC JWT's) identity and a request
without a valid one is 401. In `auth.mode: local` the server binds to loopback only and acts
as the local user (a bearer token, when sent, is still verified and used).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from modelworks.registry.store import Store
from modelworks.security.identity import Identity
from modelworks.serving.auth import TokenCache
from modelworks.workspace import Workspace


def workspace(request: Request) -> Workspace:
    ws: Workspace = request.app.state.ws
    return ws


def store(request: Request) -> Store:
    s: Store = request.app.state.store()
    return s


async def identity(request: Request) -> Identity:
    """The caller; cached on the request so several dependencies share one check."""
    cached: Identity | None = getattr(request.state, "identity", None)
    if cached is not None:
        return cached
    found = await run_in_threadpool(_identify, request)
    request.state.identity = found
    return found


def _identify(request: Request) -> Identity:
    from modelworks.security.identity import authenticate_bearer, local_identity

    ws: Workspace = request.app.state.ws
    header = request.headers.get("authorization")
    if ws.settings.auth.mode == "token" or header:
        tokens: TokenCache = request.app.state.tokens
        return tokens.check(header, lambda: authenticate_bearer(ws, store(request), header))
    return local_identity(ws, None)


WorkspaceDep = Annotated[Workspace, Depends(workspace)]
StoreDep = Annotated[Store, Depends(store)]
IdentityDep = Annotated[Identity, Depends(identity)]
