"""The API's request-body cap: `serving.http.BodyLimit` answering in the API's error shape."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelworks.api.errors import error_json
from modelworks.serving.http import BodyLimit

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send


def _declared(scope: Scope) -> int | str | None:
    """The Content-Length (None when absent), or an error message when it is malformed."""
    values = [v for k, v in scope.get("headers", []) if k.lower() == b"content-length"]
    if not values:
        return None
    if len(set(values)) > 1 or not values[0].strip().isdigit():
        return "the request has an invalid Content-Length header"
    return int(values[0])


class ApiBodyLimit(BodyLimit):
    """A declared length over the cap is refused before the body is read (413, the API's
    shape); a chunked body is counted by BodyLimit, whose error our handlers render."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = _declared(scope)
            if isinstance(declared, str):
                await error_json(400, declared)(scope, receive, send)
                return
            if declared is not None and declared > self.max_bytes:
                message = (
                    f"request body is {declared} bytes, over the limit of {self.max_bytes} "
                    f"bytes ({self.setting})"
                )
                await error_json(413, message, {"Connection": "close"})(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
