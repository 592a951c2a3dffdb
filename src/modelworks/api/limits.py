"""The API's request-body cap: `serving.http.BodyLimit` answering in the API's error shape."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelworks.api.errors import error_json
from modelworks.serving.http import BodyLimit

if TYPE_CHECKING:
    from starlette.responses import Response

    from modelworks.errors import ModelworksError


class ApiBodyLimit(BodyLimit):
    """A declared length over the cap is refused before the body is read (413) and a malformed
    one is 400, both in the API's shape; a chunked body is counted by BodyLimit, whose error
    the API's handlers render."""

    def respond(self, exc: ModelworksError) -> Response:
        headers = {"Connection": "close"} if exc.status == 413 else None
        return error_json(exc.status, str(exc), headers)
