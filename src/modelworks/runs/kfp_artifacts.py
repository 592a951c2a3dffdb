"""Fetching a KFP run's artifacts from where the pipeline root put them.

An artifact record (GET /apis/v2beta1/artifacts/{id}) names its ``uri`` in the pipeline
root: ``file://`` or a path (a shared volume), ``s3://`` or ``minio://`` (the object store
KFP ships with; endpoint kfp.s3_endpoint_url, credentials from AWS_*), else a signed
``download_url`` over HTTP. A URI may name one file or a folder (a prefix of objects).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from modelworks.errors import PipelineError

_S3 = ("s3", "minio")


def fetch(artifact: dict[str, Any], dest: Path, cfg: dict[str, Any]) -> None:
    """Copy the artifact's file, or its folder's files, into the folder dest."""
    uri = str(artifact.get("uri") or "")
    url = urlparse(uri)
    dest.mkdir(parents=True, exist_ok=True)
    if url.scheme in ("", "file") and uri:
        _copy_local(Path(unquote(url.path)), dest, uri)
    elif url.scheme in _S3:
        _copy_s3(url.netloc, url.path.lstrip("/"), dest, cfg)
    elif artifact.get("download_url"):
        name = PurePosixPath(url.path).name or "artifact"
        timeout = cfg.get("timeout", 30.0)
        with urllib.request.urlopen(str(artifact["download_url"]), timeout=timeout) as resp:
            (dest / _safe(name, uri)).write_bytes(resp.read())
    else:
        raise PipelineError(
            f"KFP artifact {artifact.get('artifact_id')}: cannot fetch {uri or 'an empty uri'} "
            "(supported: file://, s3://, minio://, or a download_url)"
        )


def metrics_of(artifact: dict[str, Any], cfg: dict[str, Any]) -> dict[str, float]:
    """A Metrics artifact's numbers: its metadata (log_metric), else the JSON file it wrote."""
    meta = artifact.get("metadata") or {}
    found = {str(k): float(v) for k, v in meta.items() if _is_number(v)}
    if found:
        return found
    with tempfile.TemporaryDirectory(prefix="mw-kfp-metrics-") as tmp:
        fetch(artifact, Path(tmp), cfg)
        files = [f for f in Path(tmp).rglob("*") if f.is_file()]
        for f in files:
            try:
                doc = json.loads(f.read_text())
            except (UnicodeDecodeError, ValueError):
                continue
            if isinstance(doc, dict):
                found.update({str(k): float(v) for k, v in doc.items() if _is_number(v)})
    return found


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _copy_local(path: Path, dest: Path, uri: str) -> None:
    if path.is_dir():
        shutil.copytree(path, dest, dirs_exist_ok=True)
    elif path.is_file():
        shutil.copy2(path, dest / path.name)
    else:
        raise PipelineError(f"KFP artifact {uri}: {path} does not exist on this machine")


def _copy_s3(bucket: str, key: str, dest: Path, cfg: dict[str, Any]) -> None:
    from modelworks.data.s3 import Endpoint, client

    s3 = client(Endpoint(cfg.get("s3_endpoint_url")))
    where = f"s3://{bucket}/{key}"
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key + "/")
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        if not keys:  # one object, not a folder
            s3.download_file(bucket, key, str(dest / _safe(PurePosixPath(key).name, where)))
            return
        for k in keys:
            target = dest / _safe(k[len(key) + 1 :], where)
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, k, str(target))
    except Exception as exc:  # botocore raises ClientError and friends
        raise PipelineError(f"KFP artifact {where}: {type(exc).__name__}: {exc}") from None


def _safe(rel: str, where: str) -> str:
    parts = PurePosixPath(rel).parts
    if not parts or ".." in parts or PurePosixPath(rel).is_absolute():
        raise PipelineError(f"KFP artifact {where}: refusing the file name {rel!r}")
    return rel
