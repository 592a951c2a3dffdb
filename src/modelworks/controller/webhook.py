"""The controller's HTTP endpoints: the signed Git webhook, health, a JSON status, metrics.

`POST /hooks/git` takes a GitHub-style push: the body is signed with HMAC-SHA256 under
`controller.webhook_secret` and the signature sent as `X-Hub-Signature-256: sha256=<hex>`.
A missing signature is refused with 401, a wrong one (or no secret configured) with 403; each
refusal is logged and counted in `mw_http_refused_requests{reason="signature"}` (not audited:
an unauthenticated caller must not be able to grow the audit log). A good one wakes the
controller, once: a delivery seen before (by `X-GitHub-Delivery` or by body) is acknowledged
and triggers nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelworks.controller import deliveries
from modelworks.serving.auth import AuthMode, controller_auth, controller_policy, edge_middleware
from modelworks.serving.http import error_response, exception_handlers
from modelworks.serving.metrics import refused_counter

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
    if not hmac.compare_digest(sign(secret, body).encode(), header.strip().encode()):
        return 403, f"{HEADER} does not match the body signed with the webhook secret"
    return None


class ControllerMetrics:
    """The controller endpoints' own Prometheus registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.refused = refused_counter(self.registry)
        self.deliveries = Counter(
            "mw_webhook_deliveries",
            "Signed webhook deliveries, by result: accepted or replayed (triggered nothing).",
            ["result"],
            registry=self.registry,
        )


class ControllerEndpoints:
    """The request handlers, bound to one Controller."""

    def __init__(self, controller: Controller, metrics: ControllerMetrics) -> None:
        self.controller, self.metrics = controller, metrics

    async def hook(self, request: Request) -> Response:
        """POST /hooks/git: a signed delivery wakes the controller once."""
        body = await request.body()
        secret = self.controller.ws.settings.controller.webhook_secret
        refused = check_signature(secret, body, request.headers.get(HEADER))
        if refused is not None:
            status, reason = refused
            client = request.client.host if request.client else "?"
            log.warning("webhook refused from %s: %s", client, reason)
            self.metrics.refused.labels("signature").inc()
            return error_response(reason, status)
        event = request.headers.get("X-GitHub-Event", "push")[:64]
        delivery = request.headers.get(deliveries.HEADER)
        fresh = await run_in_threadpool(
            deliveries.remember, self.controller.store, delivery, body, event
        )
        if not fresh:
            self.metrics.deliveries.labels("replayed").inc()
            log.info("webhook delivery %s seen before: acknowledged, nothing triggered", delivery)
            return JSONResponse({"accepted": False, "event": event, "replayed": True})
        self.metrics.deliveries.labels("accepted").inc()
        if event == "ping":
            return JSONResponse({"accepted": True, "event": "ping"})
        self.controller.poke()
        log.info("webhook %s accepted: reconciling now", event)
        return JSONResponse({"accepted": True, "event": event}, status_code=202)

    async def healthz(self, request: Request) -> Response:
        """GET /healthz: 200 while the loop runs."""
        ok = not self.controller.stopping.is_set()
        ticks = self.controller.ticks
        return JSONResponse({"ok": ok, "ticks": ticks}, status_code=200 if ok else 503)

    async def status(self, request: Request) -> Response:
        """GET /api/status: the controller's state and the fleet."""
        from modelworks.registry.queries import status as fleet

        models: list[dict[str, Any]] = await run_in_threadpool(fleet, self.controller.store)
        return JSONResponse({"controller": self.controller.status(), "models": models})

    async def reconcile(self, request: Request) -> Response:
        """POST /api/reconcile: wake the controller now (what a webhook does, for a token)."""
        self.controller.poke()
        return JSONResponse({"accepted": True}, status_code=202)

    async def metrics_text(self, request: Request) -> Response:
        """GET /metrics: Prometheus exposition of the endpoints' counters."""
        body = generate_latest(self.metrics.registry)
        return Response(body, media_type="text/plain; version=0.0.4")


def create_app(
    controller: Controller, *, host: str = "127.0.0.1", auth: AuthMode | None = None
) -> Starlette:
    """The ASGI app of the controller's endpoints, to be bound to `host` (the auth default)."""
    metrics = ControllerMetrics()
    h = ControllerEndpoints(controller, metrics)
    ws = controller.ws
    mode = auth or controller_auth(ws, host)
    app = Starlette(
        routes=[
            Route("/hooks/git", h.hook, methods=["POST"]),
            Route("/healthz", h.healthz, methods=["GET"]),
            Route("/api/status", h.status, methods=["GET"]),
            Route("/api/reconcile", h.reconcile, methods=["POST"]),
            Route("/metrics", h.metrics_text, methods=["GET"]),
        ],
        exception_handlers=exception_handlers(),
        middleware=edge_middleware(
            ws,
            mode,
            controller_policy,
            lambda: controller.store,
            ws.settings.controller.max_body_bytes,
            "controller.max_body_bytes",
            metrics.refused,
        ),
    )
    app.state.metrics = metrics
    app.state.auth = mode
    return app
