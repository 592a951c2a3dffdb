"""The controller's HTTP endpoints: the signed Git webhook, health and a JSON status.

`POST /hooks/git` takes a GitHub-style push: the body is signed with HMAC-SHA256 under
`controller.webhook_secret` and the signature sent as `X-Hub-Signature-256: sha256=<hex>`.
A missing signature is refused with 401, a wrong one (or no secret configured) with 403;
each refusal is logged and written to the audit log. A good one wakes the controller.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from modelworks.registry import audit

if TYPE_CHECKING:
    from modelworks.controller.loop import Controller

log = logging.getLogger("modelworks.controller")
HEADER = "X-Hub-Signature-256"


def sign(secret: str, body: bytes) -> str:
    """The X-Hub-Signature-256 value GitHub sends for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def check_signature(secret: str | None, body: bytes, header: str | None) -> tuple[int, str] | None:
    """None when the signature is right, else (HTTP status, reason)."""
    if not secret:
        return 403, "controller.webhook_secret is not configured; webhooks are refused"
    if not header:
        return 401, f"missing {HEADER} header"
    if not hmac.compare_digest(sign(secret, body), header.strip()):
        return 403, f"{HEADER} does not match the body signed with the webhook secret"
    return None


def create_app(controller: Controller) -> Starlette:
    """The ASGI app of the controller's endpoints."""

    async def hook(request: Request) -> JSONResponse:
        body = await request.body()
        secret = controller.ws.settings.controller.webhook_secret
        refused = check_signature(secret, body, request.headers.get(HEADER))
        event = request.headers.get("X-GitHub-Event", "push")
        if refused is not None:
            status, reason = refused
            client = request.client.host if request.client else "?"
            log.warning("webhook refused from %s: %s", client, reason)
            await run_in_threadpool(
                audit.record,
                controller.store,
                [
                    audit.event(
                        "webhook.refused",
                        "/hooks/git",
                        actor=f"webhook:{client}",
                        after={"reason": reason, "event": event, "status": status},
                    )
                ],
            )
            return JSONResponse({"error": reason}, status_code=status)
        if event == "ping":
            return JSONResponse({"accepted": True, "event": "ping"})
        controller.poke()
        log.info("webhook %s accepted: reconciling now", event)
        return JSONResponse({"accepted": True, "event": event}, status_code=202)

    async def healthz(request: Request) -> JSONResponse:
        ok = not controller.stopping.is_set()
        return JSONResponse({"ok": ok, "ticks": controller.ticks}, status_code=200 if ok else 503)

    async def status(request: Request) -> JSONResponse:
        from modelworks.registry.queries import status as fleet

        models: list[dict[str, Any]] = await run_in_threadpool(fleet, controller.store)
        return JSONResponse({"controller": controller.status(), "models": models})

    return Starlette(
        routes=[
            Route("/hooks/git", hook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/api/status", status, methods=["GET"]),
        ]
    )
