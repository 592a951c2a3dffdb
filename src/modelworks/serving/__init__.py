"""`mw serve`: the embedded multi-model Open Inference Protocol server that reconciles from Git."""

from __future__ import annotations

from modelworks.serving.app import create_app, run_server
from modelworks.serving.cache import parse_size

__all__ = ["create_app", "parse_size", "run_server"]
