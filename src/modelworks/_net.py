"""Listening sockets: refuse a taken port before a server starts, with a clear error."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

from modelworks.errors import UnavailableError


def check_port(host: str, port: int, setting: str = "serving.port") -> None:
    """Raise UnavailableError (exit 69) when `host:port` cannot be bound (in use, not ours)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UnavailableError(
                f"cannot listen on {host}:{port}: {exc.strerror}; pick another port "
                f"({setting} in modelworks.yaml or --port)"
            ) from None


def serve(app: Any, host: str, port: int, what: str) -> None:
    """Run `app` with uvicorn until SIGTERM or Ctrl-C, then return normally.

    uvicorn drains in-flight requests on SIGTERM, then re-raises the signal to the handler
    that was there before it: a no-op one makes that a normal exit (0). uvicorn exits 3 when
    it cannot start (a port taken after check_port): UnavailableError naming `what`.
    """
    import uvicorn

    with _quiet_sigterm(), contextlib.suppress(KeyboardInterrupt):
        try:
            uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
        except SystemExit as exc:
            if exc.code:
                raise UnavailableError(
                    f"{what} could not start on {host}:{port} (see the log above)"
                ) from None


@contextlib.contextmanager
def _quiet_sigterm() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
