"""Pushing ModelCars to a real OCI registry (Debian's docker-registry on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from oci_registry import (  # the fixtures are used by name below
    PASSWORD,
    USERNAME,
    TokenServer,
    free_port,
    oci_registry,
    oci_registry_basic_auth,
    oci_registry_token_auth,
)

from modelworks.artifacts.oci import ImageRef, OCIStore
from modelworks.artifacts.push import RegistryAuth, auth_from_env, parse_challenge, push
from modelworks.errors import ArtifactError

__all__ = ["oci_registry", "oci_registry_basic_auth", "oci_registry_token_auth"]

ANNOTATIONS = {
    "dev.modelworks.fingerprint": "ab" * 32,
    "org.opencontainers.image.created": "2026-01-01T00:00:00Z",
}


@pytest.fixture
def store(tmp_path: Path) -> OCIStore:
    return OCIStore(tmp_path / "oci")


@pytest.fixture
def image(store: OCIStore, tmp_path: Path) -> ImageRef:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.bin").write_bytes(bytes(range(256)) * 400)
    (model / "metrics.json").write_text('{"accuracy": 0.9}')
    return store.write_image("churn", "v1", model, ANNOTATIONS)


def skopeo_inspect(ref: str, *extra: str) -> dict[str, object]:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo not installed")
    cmd = ["skopeo", "inspect", "--tls-verify=false", *extra, f"docker://{ref}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.integration
def test_push_then_skopeo_reads_it_and_a_second_push_uploads_nothing(
    store: OCIStore, image: ImageRef, oci_registry: str
) -> None:
    first = push(store, image, oci_registry, "ns/churn", "v1", insecure=True)

    assert first.uri == f"{oci_registry}/ns/churn:v1"
    assert (first.digest, first.uploaded, first.skipped) == (image.digest, 2, 0)
    assert skopeo_inspect(first.uri)["Digest"] == image.digest
    assert skopeo_inspect(first.uri, "--raw")["annotations"] == ANNOTATIONS

    again = push(store, image, oci_registry, "ns/churn", "v1", insecure=True)
    retag = push(store, image, oci_registry, "ns/churn", "latest", insecure=True)

    assert (again.uploaded, again.skipped) == (0, 2)
    assert (retag.uploaded, retag.skipped) == (0, 2)
    assert skopeo_inspect(f"{oci_registry}/ns/churn:latest")["Digest"] == image.digest


@pytest.mark.integration
def test_push_streams_a_large_layer(store: OCIStore, tmp_path: Path, oci_registry: str) -> None:
    model = tmp_path / "big"
    model.mkdir()
    (model / "weights.bin").write_bytes(os.urandom(9 << 20))  # above the in-memory limit
    image = store.write_image("big", "v1", model, {})

    result = push(store, image, oci_registry, "ns/big", "v1", insecure=True)

    raw = skopeo_inspect(result.uri, "--raw")
    assert raw["layers"] == store.manifest(image.digest)["layers"]
    assert skopeo_inspect(result.uri)["Digest"] == image.digest


@pytest.mark.integration
def test_push_to_nothing_listening_names_the_registry(store: OCIStore, image: ImageRef) -> None:
    address = f"127.0.0.1:{free_port()}"

    with pytest.raises(
        ArtifactError, match=rf"push to {address}/ns/churn:v1 failed: .*cannot reach"
    ):
        push(store, image, address, "ns/churn", "v1", insecure=True)


@pytest.mark.integration
def test_push_over_tls_to_a_plain_http_registry_suggests_insecure(
    store: OCIStore, image: ImageRef, oci_registry: str
) -> None:
    with pytest.raises(ArtifactError, match=r"set oci\.insecure"):
        push(store, image, oci_registry, "ns/churn", "v1")


@pytest.mark.integration
def test_push_refuses_a_corrupt_local_image(
    store: OCIStore, image: ImageRef, oci_registry: str
) -> None:
    layer = store.blob_path(store.manifest(image.digest)["layers"][-1]["digest"])
    layer.write_bytes(layer.read_bytes()[:-1] + b"\x01")

    with pytest.raises(ArtifactError, match="is corrupt"):
        push(store, image, oci_registry, "ns/churn", "v1", insecure=True)
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", f"docker://{oci_registry}/ns/churn:v1"],
            check=True,
            capture_output=True,
            timeout=60,
        )


@pytest.mark.integration
def test_push_with_basic_auth(
    store: OCIStore, image: ImageRef, oci_registry_basic_auth: str
) -> None:
    registry = oci_registry_basic_auth

    with pytest.raises(ArtifactError, match=r"HTTP 401.*needs credentials: set MW_OCI_USERNAME"):
        push(store, image, registry, "ns/churn", "v1", insecure=True)
    wrong = RegistryAuth(USERNAME, "wrong-password")
    with pytest.raises(
        ArtifactError, match=rf"{registry}/ns/churn:v1 failed: .*HTTP 401.*{USERNAME}"
    ):
        push(store, image, registry, "ns/churn", "v1", insecure=True, auth=wrong)

    result = push(
        store,
        image,
        registry,
        "ns/churn",
        "v1",
        insecure=True,
        auth=RegistryAuth(USERNAME, PASSWORD),
    )

    assert result.uploaded == 2
    creds = f"--creds={USERNAME}:{PASSWORD}"
    assert skopeo_inspect(result.uri, creds)["Digest"] == image.digest


@pytest.mark.integration
def test_push_with_a_bearer_token_from_the_challenge(
    store: OCIStore, image: ImageRef, oci_registry_token_auth: tuple[str, TokenServer]
) -> None:
    registry, tokens = oci_registry_token_auth

    with pytest.raises(ArtifactError, match=r"token service .* HTTP 401.*needs credentials"):
        push(store, image, registry, "team-a/churn", "v1", insecure=True)

    result = push(
        store,
        image,
        registry,
        "team-a/churn",
        "v1",
        insecure=True,
        auth=RegistryAuth(USERNAME, PASSWORD),
    )

    assert (result.uploaded, result.skipped) == (2, 0)
    assert tokens.requests[-1]["scope"] == ["repository:team-a/churn:pull,push"]
    assert tokens.requests[-1]["service"] == [tokens.service]
    static = RegistryAuth(token=tokens.issue(["repository:team-a/churn:pull,push"], USERNAME))
    again = push(store, image, registry, "team-a/churn", "v1", insecure=True, auth=static)
    assert (again.uploaded, again.skipped) == (0, 2)


@pytest.mark.parametrize("repository", ["NS/churn", "ns//churn", ""])
def test_push_rejects_a_bad_repository_before_any_request(
    store: OCIStore, image: ImageRef, repository: str
) -> None:
    with pytest.raises(ArtifactError, match=f"invalid OCI repository name '{repository}'"):
        push(store, image, "127.0.0.1:1", repository, "v1", insecure=True)


def test_auth_from_env() -> None:
    assert auth_from_env({}) is None
    basic = auth_from_env({"MW_OCI_USERNAME": "u", "MW_OCI_PASSWORD": "s3cr3t"})
    assert basic == RegistryAuth(username="u", password="s3cr3t")
    assert "s3cr3t" not in repr(basic)
    assert auth_from_env({"MW_OCI_TOKEN": "t"}) == RegistryAuth(token="t")
    with pytest.raises(ArtifactError, match="MW_OCI_PASSWORD is not set"):
        auth_from_env({"MW_OCI_USERNAME": "u"})


def test_parse_challenge() -> None:
    header = (
        'Bearer realm="https://auth.example/token",service="registry",scope="repository:a/b:pull"'
    )

    assert parse_challenge(header) == (
        "bearer",
        {
            "realm": "https://auth.example/token",
            "service": "registry",
            "scope": "repository:a/b:pull",
        },
    )
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})
