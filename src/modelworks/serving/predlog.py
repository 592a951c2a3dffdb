"""A sample of served inputs and outputs, written to the prediction log off the request path."""

from __future__ import annotations

import importlib
import logging
import queue
import random
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from modelworks.serving.runtimes import LoadedModel

log = logging.getLogger("modelworks.serving")

_STOP = object()
MAX_QUEUE = 10_000


class PredictionSampler:
    """Logs a random `rate` share of requests; a writer thread does the disk work."""

    def __init__(self, predlog: Any, rate: float) -> None:
        self.rate = rate
        self.log = predlog
        self.dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue(MAX_QUEUE)
        self._random = random.random
        self._thread = threading.Thread(target=self._run, name="mw-predlog", daemon=True)
        self._thread.start()

    @classmethod
    def create(cls, root: Path, rate: float) -> PredictionSampler | None:
        """A sampler writing under `root`, or None when the rate is 0 or logging is unavailable."""
        if rate <= 0:
            return None
        try:
            module = importlib.import_module("modelworks.monitor.predlog")
        except ImportError:
            log.warning("prediction logging is off: modelworks.monitor.predlog is not installed")
            return None
        return cls(module.PredictionLog(root), rate)

    def offer(self, model: LoadedModel, x: np.ndarray, y: np.ndarray) -> None:
        """Queue this request for logging with probability `rate` (never blocks)."""
        if self._random() >= self.rate:
            return
        try:
            item = (model.name, model.version, x, y, model.metadata.get("feature_names"))
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, _FlushMarker):
                self._flush(item)
                continue
            name, version, x, y, features = item
            try:
                self.log.append(name, version, x, y, feature_names=features)
            except Exception:  # a logging failure must not stop serving
                log.exception("prediction log append failed for %s", name)

    def _flush(self, marker: _FlushMarker) -> None:
        try:
            self.log.flush()
        except Exception:
            log.exception("prediction log flush failed")
        finally:
            marker.done.set()

    def flush(self) -> None:
        """Wait until queued rows are appended, then flush the log."""
        done = threading.Event()
        self._queue.put(_FlushMarker(done))
        done.wait(timeout=30)

    def close(self) -> None:
        """Drain the queue, stop the writer and close the log."""
        self._queue.put(_STOP)
        self._thread.join(timeout=30)
        try:
            self.log.close()
        except Exception:
            log.exception("closing the prediction log failed")


class _FlushMarker:
    def __init__(self, done: threading.Event) -> None:
        self.done = done
