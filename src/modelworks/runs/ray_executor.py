"""The Ray executor: jobs as Ray tasks on a local Ray instance or a remote cluster.

Nothing assumes a shared disk. The driver puts each distinct data file and pipeline
snapshot into the object store once, keyed by content hash; a task materializes what
its worker lacks into a worker-local cache and rewrites the job's paths:

    driver                                   worker (any node)
    ------                                   -----------------
    data/<md5>  --ray.put once per hash-->   <cache>/data/<md5>        (if absent)
    snapshot    --tar, ray.put per hash-->   <cache>/pipelines/<hash>  (if absent)
                                             execute(job) with a temp oci_dir and log
    sealed secrets --tar, ray.put per hash-> <cache>/secrets/<hash>
    signing and sealing keys --ray.put once> <scratch>/<field>.pem (0600, removed with the job)
    OCIStore(job["oci_dir"])  <--blobs----   config, layer and manifest bytes
    job["log_path"]           <--log text--

Blobs travel unchanged, so the image digest in the driver's store is the digest the
worker computed, and skopeo reads the driver's layout as it reads a local one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelworks.artifacts.oci import OCIStore
from modelworks.data.dvc import file_md5
from modelworks.errors import ConfigError, ModelworksError
from modelworks.pipelines.catalog import folder_files
from modelworks.runs.fairshare import Dispatcher
from modelworks.runs.pool import failure

Job = dict[str, Any]
Result = dict[str, Any]
CACHE_ENV = "MW_RAY_CACHE"
# Data keys of directory datasets (a tar of the laid-out folder), beside plain file md5s.
DIR_KEY = "dir-"
# Job fields naming private key files: sent per run, written 0600 into the job's scratch folder.
PRIVATE_FILES = ("signing_key", "sealing_key")


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "executor 'ray' needs the ray package: pip install 'ray>=2.30,<3' "
            "(or set executor.kind: local in modelworks.yaml)"
        ) from None
    return ray


def worker_cache() -> Path:
    """The worker-local cache of data files and pipeline snapshots, keyed by content hash."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        tempfile.gettempdir(), f"modelworks-ray-{os.getuid()}"
    )
    return Path(root)


def tar_folder(folder: Path, files: list[Path] | None = None) -> bytes:
    """A deterministic in-memory tar of a pipeline folder's files (or of `files` under it)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in folder_files(folder) if files is None else files:
            info = tar.gettarinfo(str(f), arcname=f.relative_to(folder).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with f.open("rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


def _publish(target: Path, fill: Any) -> Path:
    """Create target atomically with fill(tmp) unless it exists (a racing task may win)."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        fill(tmp)
        os.replace(tmp, target)
    except OSError:
        if not target.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _materialize_data(ray: Any, key: str, ref: Any, cache: Path) -> Path:
    def fill(tmp: Path) -> None:
        (tmp / "content").write_bytes(ray.get(ref))

    return _publish(cache / "data" / key, fill) / "content"


def _materialize_folder(ray: Any, kind: str, digest: str, ref: Any, cache: Path) -> Path:
    def fill(tmp: Path) -> None:
        with tarfile.open(fileobj=io.BytesIO(ray.get(ref)), mode="r") as tar:
            tar.extractall(tmp, filter="data")

    return _publish(cache / kind / digest, fill)


def _write_private(path: Path, data: bytes) -> Path:
    """Write a private key readable by this user only; it goes with the job's scratch folder."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def _image_blobs(oci_dir: Path, result: Result) -> dict[str, bytes]:
    """The manifest, config and layer bytes of the image a job wrote, by digest."""
    store = OCIStore(oci_dir)
    manifest = store.manifest(result["digest"])
    blobs = {result["digest"]: store.read_blob(result["digest"])}
    for desc in [manifest["config"], *manifest["layers"]]:
        blobs[desc["digest"]] = store.read_blob(desc["digest"])
    return blobs


def run_remote(job: Job, refs: dict[str, Any]) -> Result:
    """The Ray task body: materialize inputs by hash, run the job, return result, log and blobs.

    `refs` nests the object refs (data by md5, the pipeline tar) so that Ray does not fetch
    them eagerly: a worker that has them cached never transfers them.
    """
    import ray

    from modelworks.runs.worker import execute

    cache = worker_cache()
    local = json.loads(json.dumps(job))
    local["data"]["files"] = [
        str(
            _materialize_folder(ray, "data", k, refs["data"][k], cache)
            if k.startswith(DIR_KEY)
            else _materialize_data(ray, k, refs["data"][k], cache)
        )
        for k in job["data"]["keys"]
    ]
    p = job["pipeline"]
    local["pipeline"]["source"] = str(
        _materialize_folder(ray, "pipelines", p["hash"], refs["pipeline"], cache)
    )
    (cache / "work").mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"job-{job['run_id']}-", dir=cache / "work"))
    try:
        local.update(
            oci_dir=str(scratch / "oci"), work_dir=str(scratch), log_path=str(scratch / "run.log")
        )
        for field, ref in refs["private"].items():
            local[field] = str(_write_private(scratch / f"{field}.pem", ray.get(ref)))
        if refs["secrets"] is not None:
            digest, ref = refs["secrets"]
            local["secrets_dir"] = str(_materialize_folder(ray, "secrets", digest, ref, cache))
        result = execute(local)
        result["pid"] = f"{socket.gethostname()}:{result.get('pid', '')}"
        if result.get("status") == "succeeded":
            result["blobs"] = _image_blobs(scratch / "oci", result)
        log = Path(local["log_path"])
        result["log"] = log.read_text(errors="replace") if log.exists() else ""
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class RayExecutor:
    """Jobs as Ray tasks; results in completion order, artifacts in the driver's store."""

    name = "ray"

    def __init__(
        self, workers: int, address: str | None = None, timeout: float | None = None
    ) -> None:
        self.workers = max(1, workers)
        self.address = address or os.environ.get("MW_RAY_ADDRESS") or None
        self.timeout = timeout
        self._started = False

    def connect(self) -> Any:
        """Connect to the cluster at `address`, or start a local Ray instance."""
        ray = _ray()
        if ray.is_initialized():
            return ray
        try:
            # Ray's own INFO/WARNING lines would interleave with the progress bar and --json.
            quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
            if self.address:
                ray.init(address=self.address, **quiet)
            else:
                ray.init(num_cpus=self.workers, include_dashboard=False, **quiet)
                self._started = True
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"cannot connect to Ray at {self.address or 'a new local instance'}: {exc}"
            ) from None
        return ray

    def close(self) -> None:
        """Stop the local Ray instance if this executor started it."""
        if self._started:
            _ray().shutdown()
            self._started = False

    def run(self, jobs: list[Job]) -> Iterator[Result]:
        """Run jobs as Ray tasks; yield each result as it finishes."""
        if not jobs:
            return
        ray = self.connect()
        # No Ray-level retries: a lost or timed-out task comes back "retryable" and the line's
        # queue retries it with backoff and counts the attempt, as with the local pool.
        task = ray.remote(num_cpus=1, max_retries=0, retry_exceptions=False)(run_remote)
        uploads = _Uploads(ray)
        # Submission order is start order on a busy cluster: tenants share it by fair share.
        todo = Dispatcher(jobs)
        pending: dict[Any, tuple[Job, float]] = {}
        cpus = int(ray.cluster_resources().get("CPU", self.workers))
        # With a timeout, submit no more than can start at once: the clock runs from submission.
        limit = max(1, cpus) if self.timeout else max(64, 4 * cpus)
        while todo or pending:
            while todo and len(pending) < limit:
                job = todo.take([j for j, _ in pending.values()])
                if job is None:
                    break
                pending[task.remote(*uploads.prepare(job))] = (job, time.monotonic())
            for ref in self._ready(ray, pending):
                yield _finish(ray, ref, pending.pop(ref)[0])
            yield from self._expire(ray, pending)

    def _ready(self, ray: Any, pending: dict[Any, tuple[Job, float]]) -> list[Any]:
        """Finished tasks: wait for one (until the nearest deadline), then take all done."""
        wait_for = None
        if self.timeout:
            oldest = min(t for _, t in pending.values())
            wait_for = max(0.0, oldest + self.timeout - time.monotonic())
        ready, rest = ray.wait(list(pending), num_returns=1, timeout=wait_for)
        if ready and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        return list(ready)

    def _expire(self, ray: Any, pending: dict[Any, tuple[Job, float]]) -> Iterator[Result]:
        """Kill the tasks past the timeout and report them as retryable failures."""
        if not self.timeout:
            return
        now = time.monotonic()
        for ref in [r for r, (_, t) in pending.items() if now - t > self.timeout]:
            job, _ = pending.pop(ref)
            ray.cancel(ref, force=True)
            yield failure(job, f"timed out after {self.timeout:g}s; the Ray task was killed")


class _Uploads:
    """Object-store refs of data files and pipeline snapshots, put once per content hash."""

    def __init__(self, ray: Any) -> None:
        self.ray = ray
        self.md5: dict[str, str] = {}
        self.data: dict[str, Any] = {}
        self.pipelines: dict[str, Any] = {}
        self.files: dict[str, Any] = {}
        self.folders: dict[str, tuple[str, Any] | None] = {}

    def prepare(self, job: Job) -> tuple[Job, dict[str, Any]]:
        """The job with data keys instead of driver paths, and the refs its task needs."""
        keys = [self._data(f) for f in job["data"]["files"]]
        p = job["pipeline"]
        if p["hash"] not in self.pipelines:
            self.pipelines[p["hash"]] = self.ray.put(tar_folder(Path(p["source"])))
        private = {f: job[f] for f in PRIVATE_FILES if job.get(f) and Path(job[f]).is_file()}
        remote = {**job, "data": {**job["data"], "keys": keys, "files": []}}
        remote.update(dict.fromkeys(PRIVATE_FILES), secrets_dir=None)
        refs = {
            "data": {k: self.data[k] for k in keys},
            "pipeline": self.pipelines[p["hash"]],
            "private": {f: self._file(path) for f, path in private.items()},
            "secrets": self._folder(job.get("secrets_dir")),
        }
        return remote, refs

    def _file(self, path: str) -> Any:
        if path not in self.files:
            self.files[path] = self.ray.put(Path(path).read_bytes())
        return self.files[path]

    def _folder(self, path: str | None) -> tuple[str, Any] | None:
        """(sha256 of its tar, ref) of a folder, or None when there is no such folder."""
        if not path or not Path(path).is_dir():
            return None
        if path not in self.folders:
            tar = tar_folder(Path(path))
            self.folders[path] = (hashlib.sha256(tar).hexdigest(), self.ray.put(tar))
        return self.folders[path]

    def _data(self, path: str) -> str:
        if path not in self.md5 and os.path.isdir(path):  # a directory dataset, laid out
            tar = tar_folder(Path(path), sorted(p for p in Path(path).rglob("*") if p.is_file()))
            digest = DIR_KEY + hashlib.sha256(tar).hexdigest()
            self.md5[path] = digest
            if digest not in self.data:
                self.data[digest] = self.ray.put(tar)
        if path not in self.md5:
            digest = file_md5(Path(path))
            self.md5[path] = digest
            if digest not in self.data:
                self.data[digest] = self.ray.put(Path(path).read_bytes())
        return self.md5[path]


def _finish(ray: Any, ref: Any, job: Job) -> Result:
    """Fetch one task's result; write its log and image on the driver."""
    try:
        result: Result = ray.get(ref)
    except Exception as exc:  # the task or its worker was lost
        result = failure(job, f"ray task failed: {_describe(exc)}")
    log = result.pop("log", None)
    blobs = result.pop("blobs", None)
    log_path = Path(job["log_path"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as fh:
        fh.write(log if log is not None else f"{result.get('error', '')}\n")
    if blobs:
        try:
            result.update(_store_image(job, result, blobs))
        except (ModelworksError, OSError, ValueError) as exc:
            result.update(
                status="failed",
                error=f"could not write {job['model']}:{job['version']} to {job['oci_dir']}: {exc}",
            )
    return result


def _describe(exc: Exception) -> str:
    """The root cause of a Ray task error, without Ray's colour codes and task banner."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def _store_image(job: Job, result: Result, blobs: dict[str, bytes]) -> dict[str, str]:
    """Write the worker's blobs into the driver's OCI store and tag the manifest."""
    store = OCIStore(Path(job["oci_dir"]))
    manifest = blobs.pop(result["digest"])
    for digest, data in blobs.items():
        if store.put_blob(data) != digest:
            raise ValueError(f"blob {digest} changed in transit")
    image = store.tag_manifest(job["model"], job["version"], manifest)
    if image.digest != result["digest"]:
        raise ValueError(f"manifest {result['digest']} changed in transit")
    return {"digest": image.digest, "ref": image.tag, "layout": str(image.layout)}
