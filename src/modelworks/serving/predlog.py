"""A random sample of served inputs and outputs, handed to the monitoring prediction log."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np

from modelworks.errors import ModelworksError

log = logging.getLogger("modelworks.serving")


class PredictionSampler:
    """Appends a random `rate` share of requests to a PredictionLog (it buffers; no disk here)."""

    def __init__(self, predlog: Any, rate: float) -> None:
        self.rate = rate
        self.log = predlog
        self.failures = 0
        self._random = random.random

    @classmethod
    def create(cls, root: Path, rate: float) -> PredictionSampler | None:
        """A sampler writing under `root`, or None when the rate is 0 or logging is unavailable."""
        if rate <= 0:
            return None
        try:
            from modelworks.monitor.predlog import PredictionLog
        except ImportError:
            log.warning("prediction logging is off: modelworks.monitor.predlog is not installed")
            return None
        return cls(PredictionLog(root), rate)

    def offer(
        self,
        name: str,
        version: str,
        x: np.ndarray,
        y: np.ndarray,
        feature_names: list[str] | None,
    ) -> None:
        """Log this request with probability `rate`; a logging problem never fails the request."""
        if self._random() >= self.rate:
            return
        try:
            self.log.append(name, version, x, y, feature_names=feature_names)
        except ModelworksError as exc:
            self.failures += 1
            if self.failures == 1:
                log.warning("prediction log refused a row of %s: %s", name, exc)

    def flush(self) -> None:
        """Write buffered rows now."""
        self.log.flush()

    def close(self) -> None:
        """Write what is left and stop the log's writer."""
        try:
            self.log.close()
        except ModelworksError:
            log.exception("closing the prediction log failed")
