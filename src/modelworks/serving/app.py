"""`mw serve`: the Open Inference Protocol (KServe v2 REST) app over the model server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import modelworks
from modelworks import _net
from modelworks.errors import ModelworksError, ServingError
from modelworks.serving._json import dumps
from modelworks.serving.auth import (
    AuthMode,
    edge_middleware,
    lazy_store,
    serving_auth,
    serving_policy,
)
from modelworks.serving.cache import parse_size
from modelworks.serving.http import error_response, exception_handlers
from modelworks.serving.predlog import PredictionSampler
from modelworks.serving.protocol import (
    InferenceRequestError,
    decode_input,
    encode_output,
    parse_request,
)
from modelworks.serving.reconcile import visible_result
from modelworks.serving.server import ModelServer
from modelworks.tenancy.access import DEFAULT_TENANT, visible_tenants

if TYPE_CHECKING:
    from modelworks.serving.reconcile import ModelKey
    from modelworks.serving.runtimes import LoadedModel
    from modelworks.workspace import Workspace

log = logging.getLogger("modelworks.serving")
JSON = "application/json"
TENANT_BASE = "/tenants/{tenant}"  # a non-default tenant's base URL, like a KServe namespace


def _json(payload: Any, status: int = 200) -> Response:
    return Response(dumps(payload), status_code=status, media_type=JSON)


def _specs(model: LoadedModel) -> dict[str, dict[str, Any]]:
    cached = model.extra.get("input_specs")
    if cached is None:
        cached = {str(s["name"]): s for s in model.metadata.get("inputs", []) if "name" in s}
        model.extra["input_specs"] = cached
    return cached


def _features(req: dict[str, Any], model: LoadedModel) -> np.ndarray:
    specs = _specs(model)
    inputs = req["inputs"]
    if len(inputs) != 1 or (specs and len(specs) != 1):
        raise InferenceRequestError(
            f"model {model.name} takes {max(len(specs), 1)} input tensor(s) "
            f"({', '.join(specs) or 'any name'}), the request has {len(inputs)}"
        )
    return decode_input(inputs[0], specs)


def _predict(model: LoadedModel, x: np.ndarray) -> np.ndarray:
    try:
        return np.asarray(model.predict(x))
    except (ValueError, TypeError, ArithmeticError, IndexError) as exc:
        raise InferenceRequestError(
            f"model {model.name} version {model.version} cannot predict on this input: {exc}"
        ) from None


def _outputs(req: dict[str, Any], model: LoadedModel, y: np.ndarray) -> list[dict[str, Any]]:
    declared = model.metadata.get("outputs") or [{"name": "output-0"}]
    name = str(declared[0].get("name", "output-0"))
    unknown = [n for n in req["outputs"] if n != name]
    if unknown:
        raise InferenceRequestError(
            f"unknown output(s) {', '.join(unknown)}; the model's output is {name}"
        )
    return [encode_output(name, y)]


def _tenants(request: Request) -> frozenset[str] | None:
    """The tenants the caller may see: all without auth, else the token's (see tenancy.access)."""
    identity = request.scope.get("state", {}).get("identity")
    return None if identity is None else visible_tenants(identity)


def model_key(request: Request) -> ModelKey:
    """(tenant, name) of a model route: `/tenants/{tenant}/v2/models/{name}` names the tenant;
    on `/v2/models/{name}` a qualified `acme/churn` does, else it is the default tenant's."""
    name = str(request.path_params["name"])
    tenant = request.path_params.get("tenant")
    if tenant is not None:
        return str(tenant), name
    owner, sep, bare = name.rpartition("/")
    return (owner, bare) if sep and owner and bare else (DEFAULT_TENANT, name)


class ServingApp:
    """The request handlers, bound to one ModelServer."""

    def __init__(
        self, server: ModelServer, sampler: PredictionSampler | None, hide_names: bool = False
    ) -> None:
        self.server = server
        self.sampler = sampler
        self.hide_names = hide_names

    async def infer(self, request: Request) -> Response:
        """POST [/tenants/{tenant}]/v2/models/{name}[/versions/{version}]/infer."""
        start = time.perf_counter()
        name, key = request.path_params["name"], model_key(request)
        tenants = _tenants(request)
        known = key in self.server.entries and (tenants is None or key[0] in tenants)
        label = key if known else ("", "")  # never a label per made-up or hidden name
        try:
            entry = self.server.entry(key, tenants)
            model = await self.server.resolve(key, request.path_params.get("version"))
            req = parse_request(await request.body())
            x = _features(req, model)
            y = _predict(model, x)
            payload: dict[str, Any] = {
                "model_name": name,
                "model_version": model.version,
                "outputs": _outputs(req, model, y),
            }
        except ModelworksError as exc:
            self.server.metrics.error(label, exc.status)
            return error_response(str(exc), exc.status)
        if "id" in req:
            payload["id"] = req["id"]
        if self.sampler is not None:
            meta = model.metadata.get("feature_names")
            self.sampler.offer(entry.label, model.version, x, y, meta)
        response = _json(payload)
        self.server.metrics.observe(key, time.perf_counter() - start)
        return response

    async def model_ready(self, request: Request) -> Response:
        """GET .../v2/models/{name}[/versions/{version}]/ready: 200 when it can infer, else 503."""
        name, version = request.path_params["name"], request.path_params.get("version")
        key = model_key(request)
        self.server.entry(key, _tenants(request))
        status = await self.server.status(key, name)
        if version is not None and status["ready"] and version != status.get("version"):
            status = {**status, "ready": False, "error": f"version {version} is not being served"}
        return _json(status, 200 if status["ready"] else 503)

    async def model_metadata(self, request: Request) -> Response:
        """GET .../v2/models/{name}[/versions/{version}]: name, versions, platform, tensors."""
        key = model_key(request)
        self.server.entry(key, _tenants(request))
        meta = await self.server.metadata(
            key, request.path_params["name"], request.path_params.get("version")
        )
        return _json(meta)

    async def models(self, request: Request) -> Response:
        """GET [/tenants/{tenant}]/v2/models: the caller's deployed models, desired and loaded."""
        loaded = set(self.server.cache.digests())
        tenants = _tenants(request)
        tenant = request.path_params.get("tenant")
        if tenant is not None:
            tenants = frozenset({tenant} if tenants is None else {tenant} & tenants)
        rows = [
            {
                "name": e.label,
                "tenant": e.tenant,
                "version": e.desired.version,
                "runtime": e.desired.runtime,
                "loaded": e.desired.artifact_digest in loaded,
                "error": str(self.server.failed[e.desired.artifact_digest])
                if e.desired.artifact_digest in self.server.failed
                else None,
            }
            for e in self.server.visible(tenants)
        ]
        return _json({"env": self.server.env, "commit": self.server.commit, "models": rows})

    async def server_metadata(self, request: Request) -> Response:
        """GET /v2: server name, version, extensions."""
        return _json({"name": "modelworks", "version": modelworks.__version__, "extensions": []})

    async def live(self, request: Request) -> Response:
        """GET /v2/health/live."""
        return _json({"live": True})

    async def ready(self, request: Request) -> Response:
        """GET /v2/health/ready: 503 while a deployed model has no loadable version.

        It is open, so with token auth it counts the failed models instead of naming them
        (names are for those who may see their tenant)."""
        ok, broken = self.server.ready()
        body: dict[str, Any] = {"ready": ok, "models": len(self.server.entries)}
        if broken:
            body["failed"] = len(broken) if self.hide_names else broken
        return _json(body, 200 if ok else 503)

    async def reconcile(self, request: Request) -> Response:
        """POST /admin/reconcile: re-read Git now; JSON of what changed (to the caller's
        tenants' models)."""
        retry = request.query_params.get("retry", "").lower() in ("1", "true", "yes")
        result = await self.server.reconcile(retry_failed=retry)
        body = visible_result(result.to_json(), _tenants(request))
        return _json(body, 200 if result.error is None else 500)

    async def metrics(self, request: Request) -> Response:
        """GET /metrics: Prometheus exposition (only the caller's tenants' model series)."""
        self.server.update_gauges()
        body = self.server.metrics.render(_tenants(request))
        return Response(body, media_type="text/plain; version=0.0.4")


def _protocol_routes(h: ServingApp, base: str) -> list[Route]:
    """The Open Inference Protocol under `base` ("" or a tenant's `/tenants/{tenant}`)."""
    m = base + "/v2/models/{name:path}"
    return [  # infer first: routes are tried in order and it is the hot path
        Route(m + "/versions/{version}/infer", h.infer, methods=["POST"]),
        Route(m + "/infer", h.infer, methods=["POST"]),
        Route(base + "/v2/health/live", h.live, methods=["GET"]),
        Route(base + "/v2/health/ready", h.ready, methods=["GET"]),
        Route(base + "/v2", h.server_metadata, methods=["GET"]),
        Route(base + "/v2/", h.server_metadata, methods=["GET"]),
        Route(base + "/v2/models", h.models, methods=["GET"]),
        Route(m + "/versions/{version}/ready", h.model_ready, methods=["GET"]),
        Route(m + "/ready", h.model_ready, methods=["GET"]),
        Route(m + "/versions/{version}", h.model_metadata, methods=["GET"]),
        Route(m, h.model_metadata, methods=["GET"]),
    ]


def _routes(h: ServingApp) -> list[Route]:
    return [
        *_protocol_routes(h, ""),
        *_protocol_routes(h, TENANT_BASE),
        Route("/admin/reconcile", h.reconcile, methods=["POST"]),
        Route("/metrics", h.metrics, methods=["GET"]),
    ]


async def _poll(server: ModelServer, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await server.reconcile()
        except Exception:  # the loop must outlive any one bad reconcile
            log.exception("background reconcile failed")


def create_app(
    ws: Workspace,
    env: str,
    *,
    ref: str = "HEAD",
    max_memory: int | None = None,
    sample_rate: float | None = None,
    poll_interval: float | None = None,
    reconcile_in_background: bool = True,
    allow_pickle: bool = False,
    host: str = "127.0.0.1",
    auth: AuthMode | None = None,
) -> Starlette:
    """Build the inference app for `env`; reads Git once now, then polls in the background.

    `host` is the address it will be bound to, which decides the auth default (see
    modelworks.serving.auth); `auth` overrides the settings.
    """
    settings = ws.settings.serving
    budget = max_memory if max_memory is not None else parse_size(settings.max_memory)
    rate = settings.sample_rate if sample_rate is None else sample_rate
    interval = settings.poll_interval if poll_interval is None else poll_interval
    if env not in ws.settings.environments:
        raise ServingError(
            f"environment '{env}' is not in modelworks.yaml (environments: "
            f"{', '.join(ws.settings.environments)})"
        )
    server = ModelServer(ws, env, ref=ref, max_memory=budget, allow_pickle=allow_pickle)
    first = server.reconcile_now()
    log.info("serving %d model(s) of %s at %s", len(server.entries), env, (first.commit or "")[:12])
    sampler = PredictionSampler.create(ws.state_dir / "predictions" / env, rate)
    mode = auth or serving_auth(ws, env, host)
    handlers = ServingApp(server, sampler, hide_names=mode == "token")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        poller = asyncio.ensure_future(_poll(server, interval)) if reconcile_in_background else None
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await server.close()
            if sampler is not None:
                sampler.close()

    app = Starlette(
        routes=_routes(handlers),
        exception_handlers=exception_handlers(),
        middleware=edge_middleware(
            ws,
            mode,
            serving_policy,
            lazy_store(ws),
            settings.max_body_bytes,
            "serving.max_body_bytes",
            server.metrics.refused,
        ),
        lifespan=lifespan,
    )
    app.state.server = server
    app.state.sampler = sampler
    app.state.auth = mode
    return app


def run_server(
    ws: Workspace,
    env: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    ref: str = "HEAD",
    max_memory: int | None = None,
) -> None:
    """Serve `env` with uvicorn until SIGINT/SIGTERM (uvicorn stops gracefully on both)."""
    _net.check_port(host, port)
    _setup_logging()
    app = create_app(ws, env, ref=ref, max_memory=max_memory, host=host)
    _net.serve(app, host, port, f"the server for {env!r}")


def _setup_logging() -> None:
    logger = logging.getLogger("modelworks.serving")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


__all__ = ["create_app", "parse_size", "run_server"]
