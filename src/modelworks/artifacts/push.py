"""Push images from the local OCI store to any OCI distribution registry.

Follows the OCI distribution spec: HEAD each blob and skip those already there,
POST + PUT a monolithic upload for the rest, then PUT the manifest by tag. Registries
that answer 401 get what their ``WWW-Authenticate`` challenge asks for: a bearer token
from the realm (with basic credentials when given) or plain basic auth.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from modelworks.artifacts.oci import MANIFEST_TYPE, ImageRef, OCIStore, validate_repo, validate_tag
from modelworks.errors import ArtifactError

_SMALL_BLOB = 8 << 20
_CHUNK = 1 << 20
_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')
_DOCKER_HUB = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}

Body = Callable[[], bytes | Iterator[bytes]]


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for a registry: username + password (basic) or a bearer token."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @property
    def has_basic(self) -> bool:
        """Whether a username and password are set."""
        return bool(self.username and self.password)


@dataclass
class PushResult:
    """What a push did: where the image is now and how many blobs were sent."""

    uri: str
    digest: str
    uploaded: int
    skipped: int


def auth_from_env(environ: Mapping[str, str] | None = None) -> RegistryAuth | None:
    """Credentials from MW_OCI_USERNAME + MW_OCI_PASSWORD (basic) or MW_OCI_TOKEN (bearer)."""
    env = os.environ if environ is None else environ
    username, password = env.get("MW_OCI_USERNAME"), env.get("MW_OCI_PASSWORD")
    token = env.get("MW_OCI_TOKEN")
    if bool(username) != bool(password):
        missing = "MW_OCI_PASSWORD" if username else "MW_OCI_USERNAME"
        raise ArtifactError(f"registry credentials are incomplete: {missing} is not set")
    if not (username or token):
        return None
    return RegistryAuth(username=username or None, password=password or None, token=token or None)


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split a WWW-Authenticate header into its scheme (lowercase) and parameters."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) or m.group(3) or "" for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return scheme.lower(), params


def _base_url(registry: str, insecure: bool) -> tuple[str, str]:
    """Return (base URL, host[:port] as users write it) for a registry address."""
    registry = registry.rstrip("/")
    if "://" in registry:
        scheme, _, host = registry.partition("://")
    else:
        scheme, host = ("http" if insecure else "https"), registry
    if not host or "/" in host:
        raise ArtifactError(f"invalid OCI registry address {registry!r}: expected host[:port]")
    return f"{scheme}://{_DOCKER_HUB.get(host, host)}", host


def _oci_errors(resp: httpx.Response) -> str:
    """The registry's error codes and messages, or the start of the body."""
    try:
        errors = resp.json().get("errors", [])
        text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except (ValueError, AttributeError):
        text = resp.text[:200].strip()
    return f"HTTP {resp.status_code} {resp.reason_phrase}" + (f" ({text})" if text else "")


class _Session:
    """One push's HTTP session: base URL, auth state and error wording."""

    def __init__(
        self, registry: str, repository: str, tag: str, insecure: bool, auth: RegistryAuth | None
    ) -> None:
        self.base, self.host = _base_url(registry, insecure)
        self.repository = repository
        self.target = f"{self.host}/{repository}:{tag}"
        self.insecure = insecure
        self.auth = auth
        self.header: str | None = f"Bearer {auth.token}" if auth and auth.token else None
        self.client = httpx.Client(timeout=_TIMEOUT, follow_redirects=True)

    def fail(self, what: str, detail: str, hint: str = "") -> ArtifactError:
        """An ArtifactError naming the registry, the repository and what went wrong."""
        return ArtifactError(f"push to {self.target} failed: {what}: {detail}{hint}")

    def request(
        self,
        method: str,
        url: str,
        *,
        ok: tuple[int, ...],
        what: str,
        headers: dict[str, str] | None = None,
        body: Body | None = None,
    ) -> httpx.Response:
        """Send a request, answering one auth challenge; raise ArtifactError unless status in ok."""
        resp = self._send(method, url, headers, body, what)
        if resp.status_code == 401:
            self._authenticate(resp, what)
            resp = self._send(method, url, headers, body, what)
            if resp.status_code == 401:
                raise self.fail(what, _oci_errors(resp), self._credentials_hint())
        if resp.status_code not in ok:
            hint = " (access denied for these credentials)" if resp.status_code == 403 else ""
            raise self.fail(what, _oci_errors(resp), hint)
        return resp

    def _send(
        self, method: str, url: str, headers: dict[str, str] | None, body: Body | None, what: str
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if self.header:
            all_headers["Authorization"] = self.header
        target = url if "://" in url else f"{self.base}{url}"
        try:
            return self.client.request(
                method, target, headers=all_headers, content=body() if body else None
            )
        except httpx.TransportError as exc:
            raise self._transport_error(exc, what) from None

    def _transport_error(self, exc: httpx.TransportError, what: str) -> ArtifactError:
        hint = ". Is the registry running at that address?"
        if "ssl" in str(exc).lower() or "tls" in str(exc).lower():
            hint = ". If the registry speaks plain HTTP, set oci.insecure (insecure=True)"
        reason = str(exc) or type(exc).__name__
        return self.fail(what, f"cannot reach OCI registry {self.base} ({reason})", hint)

    def _authenticate(self, resp: httpx.Response, what: str) -> None:
        scheme, params = parse_challenge(resp.headers.get("www-authenticate", ""))
        if scheme == "bearer" and params.get("realm"):
            self.header = f"Bearer {self._fetch_token(params, what)}"
        elif scheme == "basic" and self.auth and self.auth.has_basic:
            self.header = _basic_header(self.auth)
        else:
            raise self.fail(what, _oci_errors(resp), self._credentials_hint())

    def _credentials_hint(self) -> str:
        if self.auth is None:
            return (
                " (the registry needs credentials: set MW_OCI_USERNAME and MW_OCI_PASSWORD,"
                " or MW_OCI_TOKEN)"
            )
        who = f"user {self.auth.username!r}" if self.auth.username else "the token"
        return f" (the registry rejected the credentials of {who})"

    def _fetch_token(self, params: dict[str, str], what: str) -> str:
        scopes = {f"repository:{self.repository}:pull,push"}
        if params.get("scope") and f"repository:{self.repository}:" not in params["scope"]:
            scopes.add(params["scope"])
        query: dict[str, str | list[str]] = {"scope": sorted(scopes)}
        if params.get("service"):
            query["service"] = params["service"]
        basic = (
            (self.auth.username or "", self.auth.password or "")
            if self.auth and self.auth.has_basic
            else None
        )
        try:
            resp = self.client.get(params["realm"], params=query, auth=basic)
        except httpx.TransportError as exc:
            raise self.fail(what, f"cannot reach token service {params['realm']} ({exc})") from None
        if resp.status_code != 200:
            hint = self._credentials_hint() if resp.status_code in (401, 403) else ""
            raise self.fail(
                what, f"token service {params['realm']} answered {_oci_errors(resp)}", hint
            )
        try:
            data: dict[str, Any] = resp.json()
            return str(data.get("token") or data["access_token"])
        except (ValueError, KeyError):
            raise self.fail(what, f"token service {params['realm']} sent no token") from None

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.client.close()


def _basic_header(auth: RegistryAuth) -> str:
    pair = f"{auth.username or ''}:{auth.password or ''}".encode()
    return f"Basic {base64.b64encode(pair).decode()}"


def _blob_body(path: Path, size: int) -> Body:
    if size <= _SMALL_BLOB:
        return path.read_bytes

    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f:
            while data := f.read(_CHUNK):
                yield data

    return chunks


def _push_blob(session: _Session, store: OCIStore, desc: dict[str, Any]) -> bool:
    """Upload one blob unless the registry has it; return True when it was uploaded."""
    digest, size = desc["digest"], int(desc["size"])
    blobs = f"/v2/{session.repository}/blobs"
    head = session.request(
        "HEAD", f"{blobs}/{digest}", ok=(200, 404), what=f"checking blob {digest}"
    )
    if head.status_code == 200:
        return False
    start = session.request("POST", f"{blobs}/uploads/", ok=(202,), what="starting a blob upload")
    location = start.headers.get("location")
    if not location:
        raise session.fail("starting a blob upload", "the registry sent no Location header")
    url = httpx.URL(session.base).join(location).copy_merge_params({"digest": digest})
    session.request(
        "PUT",
        str(url),
        ok=(201,),
        what=f"uploading blob {digest} ({size} bytes)",
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        body=_blob_body(store.blob_path(digest), size),
    )
    return True


def push(
    store: OCIStore,
    image: ImageRef,
    registry: str,
    repository: str,
    tag: str,
    *,
    insecure: bool = False,
    auth: RegistryAuth | None = None,
) -> PushResult:
    """Push a local image to registry/repository:tag; blobs already there are not sent again."""
    validate_repo(repository)
    validate_tag(tag)
    store.verify(image.digest)
    manifest = store.manifest(image.digest)
    raw = store.read_blob(image.digest)
    session = _Session(registry, repository, tag, insecure, auth)
    try:
        uploaded = sum(
            _push_blob(session, store, desc) for desc in [manifest["config"], *manifest["layers"]]
        )
        resp = session.request(
            "PUT",
            f"/v2/{repository}/manifests/{tag}",
            ok=(200, 201),
            what="putting the manifest",
            headers={"Content-Type": manifest.get("mediaType", MANIFEST_TYPE)},
            body=lambda: raw,
        )
    finally:
        session.close()
    echoed = resp.headers.get("docker-content-digest")
    if echoed and echoed != image.digest:
        raise ArtifactError(
            f"push to {session.target} failed: the registry stored manifest {echoed}, "
            f"expected {image.digest}"
        )
    total = 1 + len(manifest["layers"])
    return PushResult(
        uri=f"{session.host}/{repository}:{tag}",
        digest=image.digest,
        uploaded=uploaded,
        skipped=total - uploaded,
    )


__all__ = ["PushResult", "RegistryAuth", "auth_from_env", "parse_challenge", "push"]
