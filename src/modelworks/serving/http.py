"""The HTTP edge shared by the inference server and the controller's endpoints.

One JSON error shape for every 4xx and 5xx: `{"error": "<message>"}` (the Open Inference
Protocol's error object), with `WWW-Authenticate: Bearer` on a 401 and `Connection: close` on
a 413. Request bodies are capped by `BodyLimit` before they are read whole,.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from starlette.exceptions import HTTPException
from starlette.responses import Response

from modelworks.errors import ModelworksError
from modelworks.serving._json import MalformedRequestError, dumps

if TYPE_CHECKING:
    from prometheus_client import Counter
    from starlette.requests import Request
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("modelworks.serving")
JSON = "application/json"
REALM = 'Bearer realm="modelworks"'


class BodyTooLargeError(ModelworksError):
    """A request body is larger than the configured cap."""

    status: ClassVar[int] = 413


def error_response(message: str, status: int, headers: Mapping[str, str] | None = None) -> Response:
    """The one error response of both apps: `{"error": message}` with `status`."""
    extra = dict(headers or {})
    if status == 401:
        extra.setdefault("WWW-Authenticate", REALM)
    if status == 413:  # the unread rest of the body must not be parsed as the next request
        extra.setdefault("Connection", "close")
    return Response(dumps({"error": message}), status_code=status, media_type=JSON, headers=extra)


def render(exc: ModelworksError) -> Response:
    """The error response of one of our errors (its class carries the status)."""
    return error_response(str(exc), exc.status)


async def on_error(request: Request, exc: Exception) -> Response:
    """The exception handler of both apps: our errors, Starlette's 404/405, and the rest."""
    if isinstance(exc, ModelworksError):
        return render(exc)
    if isinstance(exc, HTTPException):
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(message, exc.status_code, exc.headers)
    log.exception("unexpected error in %s %s", request.method, request.url.path)
    return error_response(f"internal error: {type(exc).__name__}: {exc}", 500)


def exception_handlers() -> dict[Any, Callable[..., Any]]:
    """Starlette `exception_handlers=` for the one error shape."""
    return {ModelworksError: on_error, HTTPException: on_error, Exception: on_error}


def _declared_length(scope: Scope) -> int | None:
    values = [v for k, v in scope.get("headers", []) if k.lower() == b"content-length"]
    if not values:
        return None
    if len(set(values)) > 1 or not values[0].strip().isdigit():
        raise MalformedRequestError("the request has an invalid Content-Length header")
    return int(values[0])


class BodyLimit:
    """ASGI middleware: refuse bodies over `max_bytes` with 413, reading at most that much.

    A declared Content-Length over the cap is refused before a byte of the body is read; a
    chunked body is counted while the endpoint reads it and refused once past the cap.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, setting: str, refused: Counter | None = None
    ) -> None:
        self.app, self.max_bytes, self.setting, self.refused = app, max_bytes, setting, refused

    def respond(self, exc: ModelworksError) -> Response:
        """The refusal of a body before the app sees it, in the app's error shape."""
        return render(exc)

    def _too_large(self, size: str) -> BodyTooLargeError:
        if self.refused is not None:
            self.refused.labels("too_large").inc()
        return BodyTooLargeError(
            f"request body is {size}, over the limit of {self.max_bytes} bytes ({self.setting})"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            declared = _declared_length(scope)
        except MalformedRequestError as exc:
            await self.respond(exc)(scope, receive, send)
            return
        if declared is not None and declared > self.max_bytes:
            await self.respond(self._too_large(f"{declared} bytes"))(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large(f"more than {self.max_bytes} bytes")
            return message

        await self.app(scope, counted, send)
