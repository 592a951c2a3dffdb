"""A real OCI registry for tests: Debian's docker-registry on a free 127.0.0.1 port.

Use the context manager directly, or the fixtures after importing them into a test module
(or a conftest)::

    from oci_registry import oci_registry  # noqa: F401  (pytest fixture)

    def test_push(oci_registry: str) -> None:  # "127.0.0.1:PORT"
        ...
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

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


def _config(storage: Path, port: int, htpasswd: Path | None, token: TokenServer | None) -> str:
    auth = ""
    if htpasswd is not None:
        auth = f"auth:\n  htpasswd:\n    realm: modelworks-test\n    path: {htpasswd}\n"
    if token is not None:
        auth = (
            f"auth:\n  token:\n    realm: {token.realm}\n    service: {token.service}\n"
            f"    issuer: {token.issuer}\n    rootcertbundle: {token.cert_path}\n"
        )
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
def run_registry(
    workdir: Path, htpasswd: Path | None = None, token: TokenServer | None = None
) -> Iterator[str]:
    """Run docker-registry with storage in workdir; yield "127.0.0.1:PORT"; stop it after.

    With htpasswd it asks for basic auth; with token it asks for bearer tokens from that server.
    """
    if not Path(REGISTRY_BIN).exists():
        pytest.skip(f"{REGISTRY_BIN} not installed (apt-get install docker-registry)")
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "registry.log"
    for _attempt in range(3):  # the free port can be taken between probe and bind
        port = free_port()
        config = workdir / "config.yml"
        config.write_text(_config(workdir / "storage", port, htpasswd, token))
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


class TokenServer:
    """A Docker token-auth server on 127.0.0.1: RS256 JWTs for USERNAME/PASSWORD only.

    It signs with a throwaway self-signed certificate (sent in the token's x5c header) that
    docker-registry trusts through ``rootcertbundle``; it records every request it answers.
    """

    service = "mw-test-registry"
    issuer = "mw-test-issuer"

    def __init__(self, workdir: Path) -> None:
        pytest.importorskip("jwt", reason="the token server needs PyJWT")
        self.cert_path = workdir / "token-cert.pem"
        self.key_pem, cert_der = _self_signed(self.cert_path)
        self.x5c = base64.b64encode(cert_der).decode()
        self.requests: list[dict[str, list[str]]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> TokenServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def issue(self, scopes: list[str], subject: str) -> str:
        """A signed token granting the actions named in scopes."""
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        jwt = pytest.importorskip("jwt", reason="the token server needs PyJWT")
        return jwt.encode(claims, self.key_pem, algorithm="RS256", headers={"x5c": [self.x5c]})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                server.requests.append(query)
                expected = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {expected}":
                    self._reply(401, {"details": "incorrect username or password"})
                    return
                token = server.issue(query.get("scope", []), USERNAME)
                self._reply(200, {"token": token, "expires_in": 300})

            def _reply(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def _self_signed(cert_path: Path) -> tuple[bytes, bytes]:
    """Write a self-signed CA certificate; return (private key PEM, certificate DER)."""
    pytest.importorskip("cryptography", reason="the token server needs cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mw-test-token-issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.DER)


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


@pytest.fixture
def oci_registry_token_auth(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, TokenServer]]:
    """A docker-registry that wants bearer tokens from a TokenServer: yields (address, server)."""
    workdir = tmp_path_factory.mktemp("registry-token")
    with TokenServer(workdir) as tokens, run_registry(workdir, token=tokens) as address:
        yield address, tokens
