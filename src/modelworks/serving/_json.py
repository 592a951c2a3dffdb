"""JSON in and out of the servers: orjson when installed, a nesting limit, safe messages."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelworks.errors import ModelworksError

MAX_JSON_DEPTH = 64
_CONTAINERS = frozenset({list, dict})  # what JSON parsers build, exactly


class MalformedRequestError(ModelworksError):
    """A request body is not the JSON (or the framing) the endpoint expects."""


try:
    import orjson

    def loads(data: bytes) -> Any:
        return orjson.loads(data)

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)

except ImportError:  # pragma: no cover - orjson is optional
    import json

    def loads(data: bytes) -> Any:
        return json.loads(data)

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, default=_json_default).encode()


def _json_default(obj: Any) -> Any:  # pragma: no cover - only without orjson
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def _too_deep(value: Any, limit: int) -> bool:
    """True when `value` nests lists/objects deeper than `limit` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = list(item.values()) if type(item) is dict else item
        if _CONTAINERS.isdisjoint(map(type, children)):  # in C: fast over long data lists
            continue
        for child in children:
            if type(child) in _CONTAINERS:
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_json(body: bytes, what: str = "request body", max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a JSON body; malformed, non-UTF-8 or too deeply nested JSON is a 400."""
    try:
        value = loads(body)
    except (ValueError, RecursionError) as exc:
        deep = isinstance(exc, RecursionError)
        reason = "nests too deeply" if deep else f"is not valid JSON: {exc}"
        raise MalformedRequestError(f"{what} {reason}") from None
    # nesting N deep takes N opening brackets: counting them (in C) spares the walk of a body
    # that cannot be too deep, which is every ordinary request
    if (
        type(value) in _CONTAINERS
        and body.count(b"[") + body.count(b"{") > max_depth
        and _too_deep(value, max_depth)
    ):
        raise MalformedRequestError(f"{what} nests lists/objects deeper than {max_depth} levels")
    return value


def describe(value: Any, limit: int = 60) -> str:
    """A short, safe rendering of a client-sent value for an error message."""
    if isinstance(value, list) and (
        len(value) > 8 or any(isinstance(v, (list, dict)) for v in value)
    ):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
