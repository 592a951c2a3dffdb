"""`GET/POST /api/v1/tokens`, `DELETE /api/v1/tokens/{id}`: what `mw token list|create|revoke`
do. A tenant admin manages their own tenant's tokens; a platform admin every tenant's."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from modelworks.api.deps import IdentityDep, StoreDep
from modelworks.api.schemas import NAME, CreatedToken, TokenList, TokenRow
from modelworks.errors import NotFoundError
from modelworks.registry import audit
from modelworks.security.identity import ROLES
from modelworks.security.tokens import DEFAULT_EXPIRY, create_token, list_tokens, revoke_token
from modelworks.serving.auth import TokenCache
from modelworks.tenancy.access import DEFAULT_TENANT, require_in_tenant, visible_tenants

router = APIRouter(tags=["tokens"])
ROLE = "^(" + "|".join(ROLES) + ")$"


@router.get("/tokens", response_model=TokenList)
def list_(
    identity: IdentityDep, store: StoreDep, user: Annotated[str | None, Query(**NAME)] = None
) -> dict[str, Any]:
    """Tokens with their state (never the secret), of the tenants the caller administers."""
    identity.require("admin", "list tokens")
    seen = visible_tenants(identity)
    rows = [t for t in list_tokens(store, user) if seen is None or t["tenant"] in seen]
    return {"tokens": rows}


@router.post("/tokens", response_model=CreatedToken, status_code=201)
async def create(
    identity: IdentityDep,
    store: StoreDep,
    user: Annotated[str, Body(embed=True, **NAME)],
    role: Annotated[str, Body(embed=True, pattern=ROLE)],
    tenant: Annotated[str, Body(embed=True, **NAME)] = DEFAULT_TENANT,
    expires: Annotated[
        str, Body(embed=True, min_length=1, max_length=16, pattern=r"^([0-9]{1,6}[hdw]|never)$")
    ] = DEFAULT_EXPIRY,
) -> dict[str, Any]:
    """A new token; the response's `token` is the only copy of the secret."""
    require_in_tenant(identity, tenant, "admin", "create tokens", f"tenant {tenant!r}")
    if not identity.authenticated:
        audit.label_actor(identity.user, identity.audit_actor)
    return await run_in_threadpool(
        lambda: create_token(
            store, user=user, role=role, tenant=tenant, expires=expires, actor=identity.user
        )
    )


@router.delete("/tokens/{token_id}", response_model=TokenRow)
async def revoke(
    token_id: Annotated[int, Path(ge=1, le=2**62)],
    identity: IdentityDep,
    store: StoreDep,
    request: Request,
) -> dict[str, Any]:
    """Revoke a token at once (revoking a revoked one changes nothing)."""
    identity.require("admin", "revoke tokens")
    found = [t for t in list_tokens(store) if t["id"] == token_id]
    if not found:
        raise NotFoundError(f"no token with id {token_id}")
    require_in_tenant(identity, found[0]["tenant"], "admin", "revoke tokens", f"token {token_id}")
    if not identity.authenticated:
        audit.label_actor(identity.user, identity.audit_actor)
    result = await run_in_threadpool(lambda: revoke_token(store, token_id, actor=identity.user))
    # This server stops honouring it at once, not after serving.token_cache_seconds.
    ws = request.app.state.ws
    request.app.state.tokens = TokenCache(ws.settings.serving.token_cache_seconds)
    return result
