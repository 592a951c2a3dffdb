"""Keeping unsealed secret values out of logs, errors, run records and output.

``redact(obj, values)`` is the one function every exit point uses: the run log (through
``RedactingWriter``), the result a worker returns (its ``error`` becomes ``runs.error``),
and what ``mw apply`` prints and returns. It replaces each value, and the encodings a
message is likely to carry it in, with ``<redacted>``::

    value            s3cr3t"pw
    repr / str()     s3cr3t\\"pw  (and 's3cr3t"pw' inside a repr'd list or dict)
    JSON             s3cr3t\\"pw
    bytes repr       b's3cr3t"pw'
    URL-quoted       s3cr3t%22pw
    base64 / hex     czNjcjN0InB3 / 7333637233742270 77

Values shorter than MIN_LENGTH characters are left alone: redacting "a" would shred every
message and hide nothing worth hiding.
"""

from __future__ import annotations

import base64
import io
import json
import urllib.parse
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

if TYPE_CHECKING:
    from modelworks.workspace import Workspace

REDACTED = "<redacted>"  # not "[redacted]": Rich would read that as markup and drop it
MIN_LENGTH = 4

T = TypeVar("T")


@lru_cache(maxsize=256)
def forms(value: bytes) -> tuple[str, ...]:
    """The spellings of `value` to redact, longest first."""
    text = value.decode("utf-8", errors="replace")
    raw = value.decode("latin-1")
    found = {
        text,
        repr(text)[1:-1],
        json.dumps(text)[1:-1],
        json.dumps(text, ensure_ascii=False)[1:-1],
        repr(value)[2:-1],
        urllib.parse.quote(text, safe=""),
        urllib.parse.quote_plus(text),
        base64.b64encode(value).decode().rstrip("="),
        base64.urlsafe_b64encode(value).decode().rstrip("="),
        value.hex(),
        raw,
    }
    return tuple(sorted((f for f in found if len(f) >= MIN_LENGTH), key=len, reverse=True))


def redact(obj: T, values: Iterable[bytes | str]) -> T:
    """`obj` with every form of every value replaced; str, bytes, dict, list, tuple recursed."""
    spelled = _spellings(values)
    if not spelled:
        return obj
    return _walk(obj, spelled)  # type: ignore[no-any-return]


def _spellings(values: Iterable[bytes | str]) -> tuple[str, ...]:
    found: set[str] = set()
    for v in values:
        data = v.encode() if isinstance(v, str) else bytes(v)
        if len(data) >= MIN_LENGTH:
            found.update(forms(data))
    return tuple(sorted(found, key=len, reverse=True))


def _walk(obj: Any, spelled: tuple[str, ...]) -> Any:
    if isinstance(obj, str):
        for form in spelled:
            if form in obj:
                obj = obj.replace(form, REDACTED)
        return obj
    if isinstance(obj, bytes):
        return _walk(obj.decode("utf-8", errors="replace"), spelled).encode()
    if isinstance(obj, dict):
        return {_walk(k, spelled): _walk(v, spelled) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_walk(v, spelled) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_walk(v, spelled) for v in obj)
    return obj


def sealed_values(ws: Workspace) -> list[bytes]:
    """Every sealed secret's value this machine can unseal (none without the private key)."""
    from modelworks.errors import ModelworksError
    from modelworks.security.keys import sealing_keys, secrets_dir
    from modelworks.security.secrets import list_sealed, unseal

    private = sealing_keys(ws)[0]
    if not private.is_file():
        return []
    values = []
    for name in list_sealed(secrets_dir(ws)):
        try:
            values.append(unseal(name, private, secrets_dir(ws)))
        except ModelworksError:
            continue  # a corrupt or foreign file: the worker could not have revealed it either
    return values


class RedactingWriter(io.TextIOBase):
    """A text stream that redacts `values` (a live list) from each line before writing it.

    Lines are held until their newline so a value written in pieces is still caught; the
    last unfinished line is written by ``close``/``finish``.
    """

    def __init__(self, target: TextIO, values: list[bytes]) -> None:
        self._target, self._values, self._pending = target, values, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            done, _, self._pending = self._pending.rpartition("\n")
            self._target.write(redact(done + "\n", self._values))
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def finish(self) -> None:
        """Write the unfinished last line (redacted) and flush."""
        if self._pending:
            self._target.write(redact(self._pending, self._values))
            self._pending = ""
        self._target.flush()

    def close(self) -> None:
        self.finish()
        super().close()
