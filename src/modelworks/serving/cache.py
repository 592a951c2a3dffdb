"""Loaded models by artifact digest: a memory-bounded LRU, and the verified on-disk cache."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from modelworks.errors import ConfigError
from modelworks.serving.runtimes import LoadedModel

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """'512MiB', '1GiB', '300MB', '4096' -> bytes; ConfigError on anything else."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise ConfigError(
            f"serving.max_memory: cannot read size {text!r}; "
            "expected a number with a unit such as 512MiB, 1GiB or 300MB"
        )
    return int(float(match.group(1)) * _UNITS[unit])


class ModelCache:
    """An LRU of loaded models keyed by artifact digest, bounded by estimated memory."""

    def __init__(self, max_memory: int, on_evict: Callable[[LoadedModel], None] | None = None):
        self.max_memory = max_memory
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()
        self._on_evict = on_evict
        self.evictions = 0

    def get(self, digest: str) -> LoadedModel | None:
        """The loaded model for `digest`, marked most recently used; None when not loaded."""
        with self._lock:
            model = self._models.get(digest)
            if model is not None:
                self._models.move_to_end(digest)
            return model

    def peek(self, digest: str) -> LoadedModel | None:
        """The loaded model for `digest` without touching its recency."""
        return self._models.get(digest)

    def put(self, model: LoadedModel) -> list[LoadedModel]:
        """Insert a model, evicting least recently used ones to fit; return the evicted."""
        with self._lock:
            old = self._models.pop(model.digest, None)
            if old is not None:
                self._used -= old.size
            self._models[model.digest] = model
            self._used += model.size
            evicted = self._shrink(keep=model.digest)
        for gone in evicted:
            if self._on_evict:
                self._on_evict(gone)
        return evicted

    def _shrink(self, keep: str) -> list[LoadedModel]:
        evicted: list[LoadedModel] = []
        while self._used > self.max_memory and len(self._models) > 1:
            digest = next(iter(self._models))
            if digest == keep:  # the newest model alone may exceed the budget
                break
            gone = self._models.pop(digest)
            self._used -= gone.size
            evicted.append(gone)
            self.evictions += 1
        return evicted

    def discard(self, digest: str) -> LoadedModel | None:
        """Unload the model for `digest` if loaded."""
        with self._lock:
            gone = self._models.pop(digest, None)
            if gone is not None:
                self._used -= gone.size
            return gone

    def digests(self) -> list[str]:
        """Loaded digests, least recently used first."""
        with self._lock:
            return list(self._models)

    @property
    def used(self) -> int:
        return self._used

    def __len__(self) -> int:
        return len(self._models)


def digest_hex(digest: str) -> str:
    """'sha256:abc…' -> 'abc…' (a safe folder name)."""
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexpart):
        raise ConfigError(f"artifact_digest {digest!r} is not of the form sha256:<64 hex digits>")
    return hexpart


def cache_dir_for(root: Path, digest: str) -> Path:
    """The folder a digest's model files are extracted into."""
    return root / digest_hex(digest)
