"""Listening sockets: refuse a taken port before a server starts, with a clear error."""

from __future__ import annotations

import socket

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
