"""The client of a remote control plane: what the CLI uses when `MW_SERVER` is set.

`MW_SERVER` is the server's base URL (`http://host:8000`), `MW_TOKEN` (or the global
`--token`) the bearer token. An error answer becomes the error the local command would
raise, so remote commands exit with the same codes: 401/403 -> 77, 404 -> NotFoundError's,
409 -> a conflict, a server that does not answer -> 69 naming MW_SERVER.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from modelworks.errors import (
    AuthenticationError,
    ConfigError,
    ConflictError,
    ModelworksError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)

PREFIX = "/api/v1"
TIMEOUT = float(os.environ.get("MW_SERVER_TIMEOUT", "60"))
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_PAGES = 10_000
ERRORS: dict[int, type[ModelworksError]] = {
    400: ConfigError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: ConfigError,
    503: UnavailableError,
}


def server() -> str | None:
    """The control plane's base URL from MW_SERVER, or None for local mode."""
    value = os.environ.get("MW_SERVER", "").strip()
    return value or None


def path(*parts: str | int) -> str:
    """`/api/v1/<part>/<part>` with each part URL-quoted (a model ref keeps its '/')."""
    return PREFIX + "".join("/" + quote(str(p), safe="/") for p in parts)


@dataclass
class Client:
    """Blocking JSON calls to the control plane at `base` with bearer `token`."""

    base: str
    token: str | None
    timeout: float = TIMEOUT

    def get(self, url: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.call("GET", url, params=params)

    def post(self, url: str, body: Any = None) -> Any:
        return self.call("POST", url, body=body)

    def call(
        self, method: str, url: str, params: Mapping[str, Any] | None = None, body: Any = None
    ) -> Any:
        """One request; the decoded JSON answer, or the error it stands for."""
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            with (
                httpx.Client(base_url=self.base, timeout=self.timeout) as http,
                http.stream(method, url, params=query, json=body, headers=headers) as resp,
            ):
                data = _read(resp)
        except httpx.TransportError as exc:
            raise UnavailableError(
                f"the control plane at MW_SERVER={self.base} does not answer ({exc}); "
                "start it with `mw server` (or `mw up`), or unset MW_SERVER to work locally"
            ) from None
        if resp.status_code >= 400:
            raise _error(resp.status_code, data, f"{method} {url}")
        return _decode(data, self.base)

    def pages(self, url: str, params: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """Every item of a paged listing (`{"items": [...], "next_cursor": ...}`)."""
        query = dict(params or {})
        for _ in range(MAX_PAGES):
            page = self.get(url, query)
            yield from page.get("items", [])
            cursor = page.get("next_cursor")
            if not cursor:
                return
            query["cursor"] = cursor
        raise ModelworksError(f"{url}: more than {MAX_PAGES} pages; narrow the query")


def client() -> Client | None:
    """The remote client when MW_SERVER is set (a clear error for a URL that is not one)."""
    base = server()
    if base is None:
        return None
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"MW_SERVER={base!r} is not a URL: set it to the control plane's base URL, "
            "e.g. http://127.0.0.1:8000"
        )
    return Client(base.rstrip("/"), os.environ.get("MW_TOKEN") or None)


def _read(resp: httpx.Response) -> bytes:
    chunks, size = [], 0
    for chunk in resp.iter_bytes():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise ModelworksError(
                f"the control plane's answer to {resp.request.url.path} is larger than "
                f"{MAX_RESPONSE_BYTES} bytes; narrow the query (--limit)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(data: bytes, base: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise UnavailableError(
            f"MW_SERVER={base} answered with something that is not JSON; is it a modelworks "
            "control plane (`mw server`)?"
        ) from None


def _error(status: int, data: bytes, what: str) -> ModelworksError:
    """The ModelworksError of an error answer, with the server's message."""
    try:
        message = str(json.loads(data)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = data[:200].decode("utf-8", "replace") or f"HTTP {status}"
    kind = ERRORS.get(status) or (UnavailableError if status >= 500 else ModelworksError)
    return kind(f"{message} (server: {what} -> {status})")
