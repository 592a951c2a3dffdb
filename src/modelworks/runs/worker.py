"""One training job, as a worker process runs it: steps, gates, model files, ModelCar."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelworks import LINE_FORMAT
from modelworks.artifacts.modelfiles import (
    custom_model_file,
    json_bytes,
    model_files,
    sample_of,
)
from modelworks.errors import ModelworksError, PipelineError, UnavailableError
from modelworks.gates import check, summary
from modelworks.pipelines.kfp import looks_like_kfp, require_kfp
from modelworks.pipelines.steps import SealedSecrets, call, load_module, run_steps
from modelworks.security.redact import RedactingWriter, redact
from modelworks.spec import Gates

if TYPE_CHECKING:
    from modelworks.artifacts.baselayer import BaseLayer

ANNOTATION_PREFIX = "dev.modelworks"


def image_annotations(job: dict[str, Any], metrics: dict[str, float]) -> dict[str, str]:
    """Lineage and metrics as manifest annotations (reverse-DNS keys)."""
    p, d = job["pipeline"], job["data"]
    notes = {
        "org.opencontainers.image.title": job["model"],
        "org.opencontainers.image.version": job["version"],
        "org.opencontainers.image.created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        f"{ANNOTATION_PREFIX}.model": job["model"],
        f"{ANNOTATION_PREFIX}.tenant": job.get("tenant", "default"),
        f"{ANNOTATION_PREFIX}.fingerprint": job["fingerprint"],
        f"{ANNOTATION_PREFIX}.runtime": job["runtime"],
        f"{ANNOTATION_PREFIX}.pipeline.name": p["name"],
        f"{ANNOTATION_PREFIX}.pipeline.version": p["version"],
        f"{ANNOTATION_PREFIX}.pipeline.hash": p["hash"],
        f"{ANNOTATION_PREFIX}.data.dataset": d["dataset"],
        f"{ANNOTATION_PREFIX}.data.hash": d["hash"],
        f"{ANNOTATION_PREFIX}.spec.commit": job.get("spec_commit") or "",
        f"{ANNOTATION_PREFIX}.spec.path": job.get("spec_path") or "",
        f"{ANNOTATION_PREFIX}.line": LINE_FORMAT,
    }
    if job.get("dirty"):  # trained from uncommitted inputs (--allow-dirty)
        notes[f"{ANNOTATION_PREFIX}.dirty"] = "true"
        notes[f"{ANNOTATION_PREFIX}.dirty.inputs"] = "; ".join(job["dirty"])[:1000]
    for name, value in metrics.items():
        notes[f"{ANNOTATION_PREFIX}.metrics.{name}"] = f"{value:.6g}"
    return notes


def _inputs(
    job: dict[str, Any], workdir: Path, secrets: SealedSecrets, module: Any = None
) -> dict[str, Any]:
    files = [Path(f) for f in job["data"]["files"]]
    links = []
    for f, name in zip(files, job["data"]["names"], strict=True):
        link = workdir / "input" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(f, link)
        links.append(link)
    out = workdir / "models"
    if module is None or _writes_files(module):
        out.mkdir()
    params = dict(job["hyperparameters"])
    return {
        "data_path": links[0],
        "data_paths": links,
        "params": params,
        "hyperparameters": params,
        "output_dir": out,
        "seed": int(job["fingerprint"][:8], 16),
        "secrets": secrets,
    }


def _writes_files(module: Any) -> bool:
    """Whether the pipeline saves its own model or a step asks for the output folder; if
    not, the model folder is built in memory and output_dir is never created."""
    import inspect

    from modelworks.pipelines.steps import STEP_ALIASES

    if callable(getattr(module, "save", None)):
        return True
    for name in (n for names in STEP_ALIASES.values() for n in names):
        fn = getattr(module, name, None)
        if callable(fn):
            try:
                if "output_dir" in inspect.signature(fn).parameters:
                    return True
            except (TypeError, ValueError):
                return True
    return False


def profile_bytes(X: Any, names: list[str] | None) -> bytes:
    """profile.json of the training features; models trained on the same features (one
    dataset often feeds many models) share it, so it is built once per process for them."""
    import hashlib

    from modelworks.monitor.profile import build_profile

    arr = np.ascontiguousarray(X)
    key = None
    if arr.dtype.kind in "biuf":
        sha = hashlib.sha256(arr.tobytes()).hexdigest()
        key = (arr.shape, arr.dtype.str, sha, tuple(names) if names is not None else None)
        if key in _PROFILES:
            return _PROFILES[key]
    data = json_bytes(build_profile(X, names), compact=True)
    if key is not None:
        if len(_PROFILES) >= 64:
            _PROFILES.pop(next(iter(_PROFILES)))
        _PROFILES[key] = data
    return data


def used_packages() -> list[str]:
    """Distributions of the top-level modules this process has imported (the run's packages)."""
    from importlib.metadata import packages_distributions

    global _DISTS
    if _DISTS is None:
        _DISTS = packages_distributions()
    dists = _DISTS
    tops = {name.split(".", 1)[0] for name in list(sys.modules)}
    return sorted({d for top in tops for d in dists.get(top, [])})


def sbom_bytes(base: BaseLayer | None = None) -> bytes:
    """The CycloneDX SBOM of the packages this process uses, built once per set of packages.

    The set is recomputed only when new modules were imported since the last call, so the
    steady state costs a dictionary lookup. `base` (the image's base layer) is listed too.
    """
    import json

    from modelworks.artifacts.sbom import environment_sbom, with_component

    global _SEEN_MODULES, _PACKAGES
    if len(sys.modules) != _SEEN_MODULES:
        _SEEN_MODULES, _PACKAGES = len(sys.modules), tuple(used_packages())
    key = (_PACKAGES, base)
    if key not in _SBOMS:
        doc = environment_sbom(list(_PACKAGES))
        if base is not None:
            doc = with_component(doc, base.component())
        _SBOMS[key] = json.dumps(doc, indent=1).encode()
    return _SBOMS[key]


def base_of(job: dict[str, Any]) -> BaseLayer | None:
    """The ModelCar base layer `oci.base_image` (job["base_image"]) asks for, built once."""
    from modelworks.artifacts.baselayer import BASE_BUSYBOX, base_layer
    from modelworks.artifacts.oci import OCIStore

    return base_layer(OCIStore(Path(job["oci_dir"])), job.get("base_image") or BASE_BUSYBOX)


_SEEN_MODULES = 0
_PACKAGES: tuple[str, ...] = ()
_SBOMS: dict[tuple[tuple[str, ...], BaseLayer | None], bytes] = {}
_DISTS: Mapping[str, list[str]] | None = None
_PROFILES: dict[tuple[Any, ...], bytes] = {}


# A model folder: on disk when the pipeline's save() wrote it, else in memory (name -> bytes).
ModelFolder = Path | dict[str, bytes]


def _save(job: dict[str, Any], ctx: dict[str, Any]) -> ModelFolder:
    """The model files, metadata, metrics, profile and SBOM: in the output folder when the
    pipeline saves its own model, else in memory (packaged without touching the disk)."""
    out: Path = ctx["output_dir"]
    files: dict[str, bytes] = {}
    if ctx["custom_save"] is not None:
        returned = call(ctx["custom_save"], ctx)
        meta: dict[str, Any] = {"runtime": job["runtime"]}
        try:
            meta["model_file"] = custom_model_file(job["runtime"], out, returned)
        except PipelineError as exc:  # raised after the scan: a hostile file is rejected first
            ctx["unservable"] = exc
    else:
        files, meta = model_files(job["runtime"], ctx["model"], ctx["data"])
    meta.update(name=job["model"], version=job["version"], task=job.get("task", ""))
    files["metadata.json"] = json_bytes(meta)
    files["metrics.json"] = json_bytes(ctx["metrics"])
    X, names = sample_of(ctx["data"])
    if X is not None:
        files["profile.json"] = profile_bytes(X, names)
    files["sbom.json"] = sbom_bytes(base_of(job))
    if ctx["custom_save"] is None:
        return files
    for name, content in files.items():
        (out / name).write_bytes(content)
    return out


def _package(job: dict[str, Any], ctx: dict[str, Any], out: ModelFolder) -> dict[str, Any]:
    """Sign the model folder (when a key is configured) and write it as a ModelCar.

    With job["durable"] false the image is not fsynced: the caller runs
    `oci.sync_store(job["oci_dir"])` before it records the result.
    """
    from modelworks.artifacts.oci import OCIStore
    from modelworks.artifacts.sign import SIGNATURE_FILE

    signed = False
    if job.get("signing_key"):
        from modelworks.artifacts.sign import sign_dir, sign_files

        if isinstance(out, dict):
            out[SIGNATURE_FILE] = sign_files(out, Path(job["signing_key"]), "models")
        else:
            sign_dir(out, Path(job["signing_key"]))
        signed = True
    # The OCI repository: the model's name, `<tenant namespace>/<name>` for other tenants.
    repository = job.get("repository") or job["model"]
    store = OCIStore(Path(job["oci_dir"]))
    notes = image_annotations(job, ctx["metrics"])
    durable = bool(job.get("durable", True))
    write = store.write_image_files if isinstance(out, dict) else store.write_image
    image = write(repository, job["version"], out, notes, base_of(job), durable=durable)  # type: ignore[arg-type]
    return {"digest": image.digest, "ref": image.tag, "layout": str(image.layout), "signed": signed}


def _scan(job: dict[str, Any], out: ModelFolder) -> dict[str, Any]:
    from modelworks.artifacts.scan import Limits, scan_dir, scan_files

    limits = Limits(**job.get("scan_limits", {}))
    threshold = job.get("scan_threshold", "medium")
    if isinstance(out, dict):
        return scan_files(out, threshold=threshold, limits=limits).to_dict()
    return scan_dir(out, threshold=threshold, limits=limits).to_dict()


def recover(job: dict[str, Any]) -> dict[str, Any] | None:
    """The result of an earlier attempt whose ModelCar was written but never recorded.

    A run killed between packaging and registering leaves a complete, verified image with
    this version's fingerprint in the store: register it instead of training again.
    """
    import json

    from modelworks.artifacts.oci import OCIStore
    from modelworks.errors import NotFoundError

    store = OCIStore(Path(job["oci_dir"]))
    try:
        image = store.resolve(job.get("repository") or job["model"], job["version"])
        notes = store.manifest(image.digest).get("annotations", {})
        if notes.get(f"{ANNOTATION_PREFIX}.fingerprint") != job["fingerprint"]:
            return None
        store.verify(image.digest)
        metrics = json.loads(store.read_file(image.digest, "metrics.json"))
        signed = _has(store, image.digest, "model.sig")
    except (NotFoundError, ModelworksError, ValueError):
        return None
    return {
        "status": "succeeded",
        "recovered": True,
        "metrics": metrics,
        "digest": image.digest,
        "ref": image.tag,
        "layout": str(image.layout),
        "signed": signed,
        "gates": {"passed": True, "failures": [], "baseline": job.get("baseline")},
        "scan": {"safe": True, "findings": [], "errors": [], "scanners": {}, "recovered": True},
    }


def _has(store: Any, digest: str, name: str) -> bool:
    from modelworks.errors import NotFoundError

    try:
        store.read_file(digest, name)
    except NotFoundError:
        return False
    return True


# What a pipeline raises for wrong code, parameters or data: the same job fails the same way
# again, so retrying only delays the error (sklearn's InvalidParameterError is a ValueError).
DETERMINISTIC: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    ImportError,
    SyntaxError,
    NameError,
    AttributeError,
    LookupError,
    ArithmeticError,
    AssertionError,
    NotImplementedError,
)


def _discard(workdir: Path) -> None:
    """Remove a finished job's temp folder; in a pool worker, on a background thread.

    Removing folders waits on the file system's journal (milliseconds on a busy disk) while
    the next job could compute. The folders still go before the worker ends: `_drain_reaper`
    runs when a multiprocessing child exits, and the pool joins its workers before it returns.
    """
    import multiprocessing

    global _REAPER
    if multiprocessing.parent_process() is None:  # inline: the caller may look right after
        shutil.rmtree(workdir, ignore_errors=True)
        return
    if _REAPER is None or _REAPER[0] != os.getpid():
        import queue
        import threading
        from multiprocessing import util

        jobs: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        thread = threading.Thread(target=_reap, args=(jobs,), name="mw-reaper", daemon=True)
        thread.start()
        _REAPER = (os.getpid(), jobs, thread)
        util.Finalize(None, _drain_reaper, exitpriority=10)
    _REAPER[1].put(workdir)


def _reap(jobs: Any) -> None:
    while (path := jobs.get()) is not None:
        shutil.rmtree(path, ignore_errors=True)


def _drain_reaper(timeout: float = 10.0) -> None:
    """Wait until the background removals of this process are done."""
    global _REAPER
    if _REAPER is not None and _REAPER[0] == os.getpid():
        _REAPER[1].put(None)
        _REAPER[2].join(timeout)
    _REAPER = None


_REAPER: tuple[int, Any, Any] | None = None


def retryable(exc: BaseException) -> bool:
    """True when a retry may succeed: I/O, memory, timeouts; False for code, parameter, data."""
    return not isinstance(exc, DETERMINISTIC)


def execute(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job to a result dict; never raises (errors are part of the result)."""
    started = time.perf_counter()
    log_path = Path(job["log_path"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"{job['version']}-", dir=job["work_dir"]))
    result: dict[str, Any] = {"run_id": job["run_id"], "model": job["model"], "pid": os.getpid()}
    logger = logging.getLogger(f"mw.run.{job['run_id']}")
    logger.propagate = False
    secrets = SealedSecrets(job.get("secrets_dir"), job.get("sealing_key"))
    with log_path.open("a") as log_file:
        fh = RedactingWriter(log_file, secrets.revealed)
        try:
            _run(job, result, logger, fh, workdir, secrets)
        finally:
            fh.finish()
    result = redact(result, secrets.revealed)
    result["duration"] = time.perf_counter() - started
    return result


def _train(
    job: dict[str, Any], workdir: Path, secrets: SealedSecrets, logger: logging.Logger
) -> dict[str, Any]:
    """Run the pipeline here (its steps, or a Kubeflow pipeline with kfp.local), or
    (executor.kind kfp) as a run on Kubeflow Pipelines."""
    if job.get("kfp"):
        from modelworks.runs.kfp_executor import train_remote

        return train_remote(job, workdir, secrets, logger)
    source = Path(job["pipeline"]["source"])
    kfp = looks_like_kfp(source) and bool(require_kfp())  # before importing it
    module = load_module(source, job["pipeline"]["hash"])
    if kfp:  # a Kubeflow pipeline: kfp.local runs it
        from modelworks.pipelines.kfp_local import run_pipeline

        # no module given: output_dir is made, and the Model artifact is saved into it
        return run_pipeline(module, job, _inputs(job, workdir, secrets), logger)
    return run_steps(module, _inputs(job, workdir, secrets, module), logger)


def _run(
    job: dict[str, Any],
    result: dict[str, Any],
    logger: logging.Logger,
    fh: RedactingWriter,
    workdir: Path,
    secrets: SealedSecrets,
) -> None:
    """Train, gate, scan and package into `result`, logging to `fh` (already redacting)."""
    with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            logger.info(
                "training %s version %s (pipeline %s %s)",
                job["model"],
                job["version"],
                job["pipeline"]["name"],
                job["pipeline"]["version"],
            )
            earlier = recover(job) if job.get("attempt", 1) > 1 else None
            if earlier is not None:
                result.update(earlier)
                logger.info(
                    "recovered %s from the store: packaged by an interrupted attempt",
                    earlier["digest"],
                )
                return
            ctx = _train(job, workdir, secrets, logger)
            result.update(metrics=ctx["metrics"], train_seconds=ctx["train_seconds"])
            failures = check(
                Gates.model_validate(job["gates"]), ctx["metrics"], job.get("baseline")
            )
            result["gates"] = summary(failures, job.get("baseline"))
            logger.info("metrics %s", ctx["metrics"])
            if failures:
                result.update(status="gated", error="; ".join(failures))
                logger.warning("gated: %s", result["error"])
            else:
                out = _save(job, ctx)
                result["scan"] = scan = _scan(job, out)
                if not scan["safe"]:
                    problems = [
                        f"{f['file']}: {f['severity']} {f['description']}" for f in scan["findings"]
                    ]
                    result.update(
                        status="rejected",
                        error="scan: model files are not verified safe: "
                        + "; ".join(problems + scan["errors"])[:2000],
                    )
                    logger.error("%s", result["error"])
                elif ctx.get("unservable") is not None:
                    raise ctx["unservable"]
                else:
                    result.update(_package(job, ctx, out), status="succeeded")
                    logger.info("packaged %s (signed: %s)", result["digest"], result["signed"])
        except ModelworksError as exc:
            # An unreachable service (a KFP endpoint) may be back by the next attempt.
            result.update(
                status="failed", error=str(exc), retryable=isinstance(exc, UnavailableError)
            )
            logger.error("%s", exc)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            result.update(status="failed", error=error, retryable=retryable(exc))
            logger.error("%s", traceback.format_exc())
        finally:
            logger.removeHandler(handler)
            _discard(workdir)
