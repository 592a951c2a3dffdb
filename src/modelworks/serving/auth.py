"""HTTP authentication of both apps: one ASGI middleware, one setting.

`serving.auth` (or `environments.<env>.serving.auth` for one environment's server) is `none`
or `token`. Unset, it is `none` on a loopback bind (the laptop) and `token` on any other
address, so a server reachable from the network never answers anonymously by default; an
explicit `none` on a non-loopback bind is obeyed, with a warning in the log.

With `token`, each request needs `Authorization: Bearer <token>` (a modelworks token or, with
`auth.oidc`, a JWT) whose role covers the route's: health endpoints are open, everything else
needs `viewer`, and `/admin/*` (the inference server) or a POST (the controller) needs
`admin`. The controller's `POST /hooks/git` stays open here: it is authenticated by its HMAC
signature. A missing, invalid, expired or revoked token gets 401 with `WWW-Authenticate:
Bearer`, a too-low role 403, both in the one error shape and counted in
`mw_http_refused_requests`.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from modelworks.errors import ModelworksError
from modelworks.security.identity import require
from modelworks.serving.http import REALM, BodyLimit, error_response

if TYPE_CHECKING:
    from prometheus_client import Counter
    from starlette.middleware import Middleware
    from starlette.responses import Response
    from starlette.types import ASGIApp, Receive, Scope, Send

    from modelworks.registry.store import Store
    from modelworks.security.identity import Identity
    from modelworks.workspace import Workspace

log = logging.getLogger("modelworks.serving")
AuthMode = Literal["none", "token"]
Policy = Callable[[str, str], str | None]  # (method, path) -> the role needed; None: open
SERVING_OPEN = frozenset({"/v2/health/live", "/v2/health/ready"})
CONTROLLER_OPEN = frozenset({"/healthz", "/hooks/git"})
READ_METHODS = frozenset({"GET", "HEAD"})
MAX_CACHED_TOKENS = 1024


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def _default(host: str) -> AuthMode:
    return "none" if is_loopback(host) else "token"


def serving_auth(ws: Workspace, env: str, host: str) -> AuthMode:
    """The auth mode of `env`'s server bound to `host`: the env's override, serving.auth, or
    the bind's default."""
    env_cfg = ws.settings.environments.get(env)
    override = env_cfg.serving.auth if env_cfg is not None else None
    mode = override or ws.settings.serving.auth or _default(host)
    _log_mode(
        f"mw serve --env {env}", mode, host, explicit=bool(override or ws.settings.serving.auth)
    )
    return mode


def controller_auth(ws: Workspace, host: str) -> AuthMode:
    """The controller endpoints' auth mode: `token` when serving.auth or any environment's
    override says so (the controller reports on every environment), else the bind's default."""
    modes = {ws.settings.serving.auth} | {e.serving.auth for e in ws.settings.environments.values()}
    modes.discard(None)
    mode: AuthMode = "token" if "token" in modes else "none" if modes else _default(host)
    _log_mode("controller endpoints", mode, host, explicit=bool(modes))
    return mode


def _log_mode(what: str, mode: AuthMode, host: str, *, explicit: bool) -> None:
    if mode == "none" and not is_loopback(host):
        log.warning(
            "%s on %s without authentication (auth: none): anyone who can reach "
            "the port can use it; set serving.auth: token",
            what,
            host,
        )
    elif not explicit and mode == "token":
        log.info("%s: token auth (serving.auth unset and %s is not a loopback address)", what, host)


def serving_policy(method: str, path: str) -> str | None:
    """Roles of the inference server's routes (a tenant's base path has the same open health
    endpoints; which tenants' models a token sees is the app's check, a 404 otherwise)."""
    if path in SERVING_OPEN:
        return None
    if path.startswith("/tenants/"):
        _, _, rest = path[len("/tenants/") :].partition("/")
        if "/" + rest in SERVING_OPEN:
            return None
    return "admin" if path.startswith("/admin") else "viewer"


def controller_policy(method: str, path: str) -> str | None:
    """Roles of the controller's routes (the webhook is authenticated by its signature)."""
    if path in CONTROLLER_OPEN:
        return None
    return "viewer" if method in READ_METHODS else "admin"


def route_path(scope: Scope) -> str:
    """The path the router matches: without the `root_path` a proxy mounts the app under."""
    path, root = str(scope["path"]), str(scope.get("root_path", ""))
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


class TokenCache:
    """Identities of recently checked Authorization headers, each trusted for `ttl` seconds.

    A token checked against the registry is trusted for `serving.token_cache_seconds`: a
    registry read per request halved throughput (benchmarks/README.md, after the trust work).
    A revoked token therefore stops working within that many seconds.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._seen: dict[str, tuple[float, Identity]] = {}

    def get(self, header: str | None) -> Identity | None:
        hit = self._seen.get(header) if header else None
        if hit is None or time.monotonic() - hit[0] > self.ttl:
            return None
        return hit[1]

    def check(self, header: str | None, authenticate: Callable[[], Identity]) -> Identity:
        """The cached identity of `header`, else `authenticate()`'s (then cached)."""
        hit = self.get(header)
        if hit is not None:
            return hit
        identity = authenticate()
        if header and self.ttl > 0:
            if len(self._seen) >= MAX_CACHED_TOKENS:
                self._seen.clear()
            self._seen[header] = (time.monotonic(), identity)
        return identity


class BearerAuth:
    """ASGI middleware: authenticate `Authorization: Bearer` and check the route's role."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        ws: Workspace,
        store: Callable[[], Store],
        policy: Policy,
        refused: Counter | None = None,
    ) -> None:
        self.app, self.ws, self.store, self.policy, self.refused = app, ws, store, policy, refused
        self.tokens = TokenCache(ws.settings.serving.token_cache_seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], route_path(scope)
        role = self.policy(method, path)
        if role is None:
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization")
        action = f"{method} {path}"
        try:
            identity = self.tokens.get(header)
            if identity is None:
                identity = await run_in_threadpool(self._check, header)
            require(identity, role, action)
        except ModelworksError as exc:
            await self._refuse(exc, header is not None)(scope, receive, send)
            return
        scope.setdefault("state", {})["identity"] = identity
        await self.app(scope, receive, send)

    def _check(self, header: str | None) -> Identity:
        from modelworks.security.identity import authenticate_bearer

        return self.tokens.check(header, lambda: authenticate_bearer(self.ws, self.store(), header))

    def _refuse(self, exc: ModelworksError, sent_token: bool) -> Response:
        if self.refused is not None and exc.status in (401, 403):
            self.refused.labels("unauthenticated" if exc.status == 401 else "forbidden").inc()
        invalid = sent_token and exc.status == 401
        headers = {"WWW-Authenticate": f'{REALM}, error="invalid_token"'} if invalid else None
        return error_response(str(exc), exc.status, headers)


def lazy_store(ws: Workspace) -> Callable[[], Store]:
    """The workspace's registry, opened on first use (a server in `none` mode never opens it)."""
    opened: list[Store] = []

    def get() -> Store:
        if not opened:
            from modelworks.registry.store import Store

            opened.append(Store(ws.registry_url))
        return opened[0]

    return get


def edge_middleware(
    ws: Workspace,
    mode: AuthMode,
    policy: Policy,
    store: Callable[[], Store],
    max_body_bytes: int,
    setting: str,
    refused: Counter,
) -> list[Middleware]:
    """The middleware both apps run: auth (in token mode) outside the body cap."""
    from starlette.middleware import Middleware

    stack = [Middleware(BodyLimit, max_body_bytes, setting, refused)]
    if mode == "token":
        stack.insert(0, Middleware(BearerAuth, ws=ws, store=store, policy=policy, refused=refused))
    return stack
