"""A real OCI registry for tests: Debian's docker-registry on a free 127.0.0.1 port.

Use the context manager directly, or the fixtures after importing them into a test module
(or a conftest)::

    from oci_registry import oci_registry  # noqa: F401  (pytest fixture)

    def test_push(oci_registry: str) -> None:  # "127.0.0.1:PORT"
        ...
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REGISTRY_BIN = "/usr/bin/docker-registry"
USERNAME = "mw-user"
PASSWORD = "mw-secret-password"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(storage: Path, port: int, htpasswd: Path | None) -> str:
    auth = ""
    if htpasswd is not None:
        auth = f"auth:\n  htpasswd:\n    realm: modelworks-test\n    path: {htpasswd}\n"
    return (
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"{auth}"
    )


def _wait_ready(proc: subprocess.Popen[bytes], address: str, log: Path) -> bool:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            httpx.get(f"http://{address}/v2/", timeout=1)
            return True
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"docker-registry did not start on {address}: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@contextlib.contextmanager
def run_registry(workdir: Path, htpasswd: Path | None = None) -> Iterator[str]:
    """Run docker-registry with storage in workdir; yield "127.0.0.1:PORT"; stop it after."""
    if not Path(REGISTRY_BIN).exists():
        pytest.skip(f"{REGISTRY_BIN} not installed (apt-get install docker-registry)")
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "registry.log"
    for _attempt in range(3):  # the free port can be taken between probe and bind
        port = free_port()
        config = workdir / "config.yml"
        config.write_text(_config(workdir / "storage", port, htpasswd))
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            if _wait_ready(proc, f"127.0.0.1:{port}", log):
                yield f"127.0.0.1:{port}"
                return
        finally:
            _stop(proc)
    raise RuntimeError(f"docker-registry failed to start: {log.read_text()[-2000:]}")


def make_htpasswd(path: Path, username: str = USERNAME, password: str = PASSWORD) -> Path:
    """Write a bcrypt htpasswd file (htpasswd -B, or the bcrypt package); skip if neither."""
    tool = shutil.which("htpasswd")
    if tool:
        out = subprocess.run(
            [tool, "-nbB", username, password], check=True, capture_output=True, text=True
        )
        path.write_text(out.stdout.strip() + "\n")
        return path
    try:
        import bcrypt
    except ImportError:
        pytest.skip("needs htpasswd (apt-get install apache2-utils) or the bcrypt package")
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
    path.write_text(f"{username}:{hashed}\n")
    return path


@pytest.fixture
def oci_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, open docker-registry for one test: yields "127.0.0.1:PORT"."""
    with run_registry(tmp_path_factory.mktemp("registry")) as address:
        yield address


@pytest.fixture
def oci_registry_basic_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A docker-registry with htpasswd basic auth (USERNAME/PASSWORD): yields "127.0.0.1:PORT"."""
    workdir = tmp_path_factory.mktemp("registry-auth")
    htpasswd = make_htpasswd(workdir / "htpasswd")
    with run_registry(workdir, htpasswd=htpasswd) as address:
        yield address
