"""Data on S3: object listings as data versions, a content-addressed fetch, and DVC remotes.

An S3 data source's version is the md5 over its listed objects (bucket, then each key, size
and ETag, sorted by key), so it changes when any object does and no content is read to plan.
The content is fetched into <cache>/s3/<version>/ once; an unchanged listing fetches nothing.
A DVC remote on S3 (`data.remote: s3://bucket/prefix`) holds content in DVC's layout,
<prefix>/files/md5/<2 hex>/<30 hex>, like the local cache (modelworks.data.dvc).

Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_SESSION_TOKEN, AWS_PROFILE, ...) or from a sealed secret named by
`data_source.credentials`, handed in already unsealed as a mapping of those names.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from modelworks.data.dvc import file_md5, store
from modelworks.errors import DataError
from modelworks.spec import DataSource
from modelworks.workspace import DataSettings

EXTRA = "pip install 'modelworks[s3]'"
Secret = Callable[[str], bytes]  # a sealed secret's name -> its unsealed value
_CRED_NAMES = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to talk S3: endpoint URL, region and explicit credentials (if any)."""

    url: str | None = None
    region: str | None = None
    credentials: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        return self.url or "AWS S3"


@dataclass(frozen=True)
class S3Object:
    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class Listing:
    """The objects an S3 data source names, and their version hash."""

    bucket: str
    base: str
    objects: tuple[S3Object, ...]
    version: str

    def relative(self, obj: S3Object) -> str:
        """The object's name under the source's prefix (the key's last part for a single key)."""
        rel = obj.key[len(self.base) :] if obj.key.startswith(self.base) else obj.key
        return rel.lstrip("/") or obj.key.rsplit("/", 1)[-1]


def _boto() -> Any:
    try:
        import boto3
        import botocore.config
    except ImportError:
        raise DataError(f"S3 data needs boto3, which is not installed; {EXTRA}") from None
    return boto3, botocore.config


_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


def client(endpoint: Endpoint) -> Any:
    """A boto3 S3 client for this endpoint, with short timeouts and bounded retries."""
    # Keyed by the credential variables too: a client keeps the credentials it first found.
    return _client(endpoint, tuple(os.environ.get(v) for v in _ENV))


@lru_cache(maxsize=32)
def _client(endpoint: Endpoint, _env: tuple[str | None, ...]) -> Any:
    boto3, config = _boto()
    creds = dict(endpoint.credentials)
    try:
        session = boto3.session.Session(**creds)
    except Exception as exc:  # botocore's ProfileNotFound and friends
        raise DataError(f"S3 endpoint {endpoint.describe()}: {exc}") from None
    cfg = config.Config(
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint.url else None,
    )
    return session.client(
        "s3", endpoint_url=endpoint.url, region_name=endpoint.region or None, config=cfg
    )


def credentials_from(values: Mapping[str, Any], what: str) -> tuple[tuple[str, str], ...]:
    """The aws_* credential pairs of an unsealed secret (keys in either case); DataError if none."""
    lower = {str(k).lower(): str(v) for k, v in values.items()}
    found = tuple((n, lower[n]) for n in _CRED_NAMES if lower.get(n))
    if not any(n == "aws_access_key_id" for n, _ in found) or not any(
        n == "aws_secret_access_key" for n, _ in found
    ):
        raise DataError(
            f"{what}: expected AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the secret"
        )
    return found


def failure(exc: Exception, bucket: str, endpoint: Endpoint, key: str | None = None) -> DataError:
    """A boto3/botocore error as one clear line naming the bucket (and key) and the endpoint."""
    where = f"s3://{bucket}/{key}" if key else f"S3 bucket {bucket!r}"
    at = f"at {endpoint.describe()}"
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return DataError(
            f"{where} {at}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or name a sealed secret in "
            "data_source.credentials"
        )
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
        return DataError(f"{where}: cannot reach the S3 endpoint {endpoint.describe()}")
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in ("NoSuchBucket",):
            return DataError(f"{where} does not exist {at}")
        if code in ("NoSuchKey", "404", "NotFound"):
            return DataError(f"{where} {at}: no such object")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            return DataError(
                f"{where} {at}: access denied ({code}); check the S3 credentials "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the sealed secret)"
            )
        return DataError(f"{where} {at}: {code or name}: {error.get('Message', '')}".rstrip(": "))
    return DataError(f"{where} {at}: {name}: {str(exc).splitlines()[0] if str(exc) else ''}")


class _Guarded:
    """Turns boto3/botocore errors raised inside the block into one DataError."""

    def __init__(self, bucket: str, endpoint: Endpoint, key: str | None = None) -> None:
        self.args = (bucket, endpoint, key)

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if exc is None or isinstance(exc, DataError) or not isinstance(exc, Exception):
            return
        if (type(exc).__module__ or "").startswith(("botocore", "boto3", "urllib3")):
            raise failure(exc, *self.args) from None


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A key glob as a regex: `*` and `?` stay within one '/' segment, `**` spans segments."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _pages(s3: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def list_source(
    endpoint: Endpoint,
    bucket: str,
    *,
    prefix: str | None = None,
    key: str | None = None,
    pattern: str | None = None,
    max_files: int = 10000,
) -> Listing:
    """List the objects a source names (bounded by max_files) and hash them into a version."""
    s3 = client(endpoint)
    if key:
        with _Guarded(bucket, endpoint, key):
            head = s3.head_object(Bucket=bucket, Key=key)
        obj = S3Object(key, int(head["ContentLength"]), str(head["ETag"]).strip('"'))
        return _listing(bucket, key.rsplit("/", 1)[0] + "/" if "/" in key else "", [obj])
    base = prefix or ""
    match = glob_regex(pattern) if pattern else None
    found: list[S3Object] = []
    seen = 0
    with _Guarded(bucket, endpoint):
        for item in _pages(s3, bucket, base):
            seen += 1
            name = str(item["Key"])
            rel = name[len(base) :].lstrip("/")
            if name.endswith("/") or (match and not match.match(rel)):
                continue  # "folder" markers hold no data
            found.append(S3Object(name, int(item["Size"]), str(item["ETag"]).strip('"')))
            if len(found) > max_files or seen > max_files * 10:
                raise _too_many(bucket, base, pattern, max_files)
    if not found:
        what = f" matching {pattern!r}" if pattern else ""
        raise DataError(
            f"S3 data source s3://{bucket}/{base} at {endpoint.describe()} has no object{what}"
        )
    return _listing(bucket, base, found)


def _too_many(bucket: str, base: str, pattern: str | None, max_files: int) -> DataError:
    what = f" matching {pattern!r}" if pattern else ""
    return DataError(
        f"S3 data source s3://{bucket}/{base}{what} lists more than {max_files} objects; "
        "narrow the prefix or pattern, or raise data.max_files in modelworks.yaml"
    )


def _listing(bucket: str, base: str, objects: list[S3Object]) -> Listing:
    ordered = tuple(sorted(objects, key=lambda o: o.key))
    h = hashlib.md5(f"s3\0{bucket}\n".encode())
    for o in ordered:
        h.update(f"{o.key}\0{o.size}\0{o.etag}\n".encode())
    return Listing(bucket, base, ordered, h.hexdigest())


def _safe_rel(rel: str, bucket: str) -> str:
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise DataError(
            f"S3 object key s3://{bucket}/{rel} cannot be a local file name "
            "(empty, '.' or '..' segments); rename it or narrow the pattern"
        )
    return rel


def local_files(cache_dir: Path, listing: Listing) -> list[Path]:
    """Where the content of this listing lives (or will live) in the cache, in key order."""
    folder = cache_dir / "s3" / listing.version
    return [folder / _safe_rel(listing.relative(o), listing.bucket) for o in listing.objects]


def fetch(endpoint: Endpoint, listing: Listing, cache_dir: Path) -> tuple[list[Path], int]:
    """The listing's content in <cache>/s3/<version>/, downloading it unless already there.

    Returns the files and how many objects were downloaded (0 when the cache had them).
    A download is verified by size (and md5, when the ETag is one) before it is published.
    """
    files = local_files(cache_dir, listing)
    folder = cache_dir / "s3" / listing.version
    if folder.is_dir():
        return files, 0
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        for obj, dest in zip(listing.objects, files, strict=True):
            part = tmp / dest.relative_to(folder)
            _download(endpoint, listing.bucket, obj, part)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.is_dir():  # another process published the same version first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return files, len(files)


def _download(endpoint: Endpoint, bucket: str, obj: S3Object, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _Guarded(bucket, endpoint, obj.key):
        client(endpoint).download_file(bucket, obj.key, str(dest))
    size = dest.stat().st_size
    if size != obj.size:
        raise DataError(
            f"s3://{bucket}/{obj.key}: downloaded {size} bytes, the listing said {obj.size}; "
            "the object changed while fetching, run the command again"
        )
    if re.fullmatch(r"[0-9a-f]{32}", obj.etag) and file_md5(dest) != obj.etag:
        raise DataError(
            f"s3://{bucket}/{obj.key}: content does not match its ETag {obj.etag}; "
            "the object changed while fetching, run the command again"
        )


# -- DVC remotes on S3 -------------------------------------------------------------------------


def is_s3_url(url: str | None) -> bool:
    return bool(url) and str(url).startswith("s3://")


def split_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ('bucket', 'some/prefix'); DataError if there is no bucket."""
    rest = url[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise DataError(f"data.remote {url!r}: expected s3://BUCKET[/PREFIX]")
    return bucket, prefix.strip("/")


def remote_key(prefix: str, md5: str) -> str:
    """The key DVC 3 gives content with this md5 in a remote: files/md5/<2>/<30>."""
    key = f"files/md5/{md5[:2]}/{md5[2:]}"
    return f"{prefix}/{key}" if prefix else key


def push(endpoint: Endpoint, url: str, source: Path, md5: str) -> str:
    """Upload `source` to the remote under its md5 unless it is there; return its s3:// URL."""
    bucket, prefix = split_url(url)
    key = remote_key(prefix, md5)
    s3 = client(endpoint)
    with _Guarded(bucket, endpoint, key):
        if not _exists(s3, bucket, key):
            s3.upload_file(str(source), bucket, key)
    return f"s3://{bucket}/{key}"


def _exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def pull(endpoint: Endpoint, url: str, md5: str, cache_dir: Path) -> Path | None:
    """Content with this md5 from the remote into the cache (verified); None when absent."""
    bucket, prefix = split_url(url)
    key = remote_key(prefix, md5)
    s3 = client(endpoint)
    with _Guarded(bucket, endpoint, key):
        if not _exists(s3, bucket, key):
            return None
        fd, tmp = tempfile.mkstemp(prefix=".mw-pull-")
        os.close(fd)
        try:
            s3.download_file(bucket, key, tmp)
            got = file_md5(Path(tmp))
            if got != md5.removesuffix(".dir"):  # a folder's manifest: <its md5>.dir
                raise DataError(
                    f"s3://{bucket}/{key}: content hashes to {got}, not {md5}; "
                    "the remote copy is corrupted"
                )
            return store(cache_dir, Path(tmp), md5)
        finally:
            os.unlink(tmp)


def endpoint_for(source: DataSource, settings: DataSettings, secret: Secret | None) -> Endpoint:
    """The endpoint of an S3 data source: its own fields, else data.endpoint_url / data.region."""
    creds: tuple[tuple[str, str], ...] = ()
    if source.credentials:
        what = f"sealed secret {source.credentials!r} (data_source.credentials)"
        if secret is None:
            raise DataError(f"{what}: no sealing key is available to unseal it here")
        creds = credentials_from(_parse_secret(secret(source.credentials), what), what)
    return Endpoint(
        source.endpoint_url or settings.endpoint_url, source.region or settings.region, creds
    )


def remote_endpoint(settings: DataSettings) -> Endpoint:
    """The endpoint of an S3 data.remote (credentials from the environment)."""
    return Endpoint(settings.endpoint_url, settings.region)


def _parse_secret(value: bytes, what: str) -> Mapping[str, Any]:
    """A secret's value as a mapping: JSON/YAML, or KEY=VALUE lines (an env file)."""
    import yaml

    text = value.decode("utf-8", "replace")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        doc = None
    if isinstance(doc, dict):
        return doc
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    found = {k.strip().removeprefix("export ").strip(): v.strip().strip("'\"") for k, v in pairs}
    if not found:
        raise DataError(f"{what}: expected a mapping or KEY=VALUE lines")
    return found
