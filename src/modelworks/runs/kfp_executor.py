"""The Kubeflow Pipelines executor: each job trains as a run on a KFP endpoint.

The worker processes stay local; only the steps move. For each job a worker compiles the
pipeline (kfp_compile), makes sure the endpoint has a pipeline named after the modelworks
pipeline with a version per modelworks version (uploaded once, then reused by name),
creates a run with the supplied parameters, waits for it, and fetches the run's Model and
Metrics artifacts. The model files then take the local line (gates, scan, ModelCar, sign):

    worker                                 KFP API (v2beta1)
    ------                                 -----------------
    compile IR --upload once per version-> pipelines / pipelines/{id}/versions
    run per job ------------------------>  runs (data_source, hyperparameters, ...)
    poll --------------------------------> runs/{id}  until SUCCEEDED / FAILED
    artifacts <--uri / download_url------  artifacts/{id}  (file://, s3://, http)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from modelworks.errors import (
    ConfigError,
    ConflictError,
    ModelworksError,
    PipelineError,
    UnavailableError,
)
from modelworks.pipelines.kfp_compile import artifact_outputs, compile_folder, parameters
from modelworks.pipelines.steps import SealedSecrets

if TYPE_CHECKING:
    from modelworks.workspace import KFPSettings

Job = dict[str, Any]
Result = dict[str, Any]
JOB_KEY = "kfp"  # a job carrying this (the kfp settings) trains remotely (worker._train)
DONE = {"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELLED"}
MODEL, METRICS = "system.Model", "system.Metrics"


class KFPExecutor:
    """Local worker processes, each driving one job's run on the KFP endpoint."""

    name = "kfp"

    def __init__(self, workers: int, settings: KFPSettings, timeout: float | None = None) -> None:
        from modelworks.runs.executor import LocalExecutor

        if not settings.host:
            raise ConfigError(
                "executor.kind is kfp but kfp.host is not set in modelworks.yaml: "
                "set it to the Kubeflow Pipelines API URL"
            )
        self.settings = settings.model_dump()
        self.settings["run_timeout"] = timeout
        # The pool's kill timer only backstops a hung API call: the wait is bounded in-job.
        self.inner = LocalExecutor(workers, timeout=timeout + 60 if timeout else None)

    def run(self, jobs: list[Job]) -> Iterator[Result]:
        return self.inner.run([dict(job, **{JOB_KEY: self.settings}) for job in jobs])


def train_remote(
    job: Job, workdir: Path, secrets: SealedSecrets, log: logging.Logger
) -> dict[str, Any]:
    """Train the job on KFP; the worker's step context: metrics and a save() of the files."""
    cfg = job[JOB_KEY]
    pipe = job["pipeline"]
    ir_text = compile_folder(Path(pipe["source"]), pipe["name"], pipe["version"])
    ir = yaml.safe_load(ir_text)
    package = workdir / "pipeline.yaml"
    package.write_text(ir_text)
    api = Endpoint(cfg, _token(cfg, secrets))
    pipeline_id, version_id = api.ensure_version(pipe, package)
    started = time.perf_counter()
    run = api.start_run(job, pipeline_id, version_id, arguments(ir, job))
    log.info("KFP run %s of pipeline %s %s", run, pipe["name"], pipe["version"])
    details = api.wait(run, cfg.get("run_timeout"))
    files = workdir / "kfp-model"
    metrics = api.collect(details, artifact_outputs(ir), files)
    log.info("KFP run %s succeeded; model files: %s", run, sorted(os.listdir(files)))

    def save(output_dir: Path) -> None:
        for f in files.iterdir():
            (shutil.copytree if f.is_dir() else shutil.copy2)(f, output_dir / f.name)

    out = workdir / "models"
    out.mkdir(exist_ok=True)
    return {
        "output_dir": out,
        "data": None,
        "model": None,
        "metrics": metrics,
        "train_seconds": time.perf_counter() - started,
        "custom_save": save,
    }


def arguments(ir: dict[str, Any], job: Job) -> dict[str, Any]:
    """The values modelworks supplies, for the parameters the compiled pipeline declares."""
    offered = {
        # The spec's data_source (as kfp.local gets it, without a local_path): the run must
        # reach the data itself (an s3 source, or a path on a volume the cluster mounts).
        "data_source": dict(job.get("data_source") or {"dataset": job["data"]["dataset"]}),
        "hyperparameters": dict(job["hyperparameters"]),
        "model_name": job["model"],
        "version": job["version"],
    }
    declared = parameters(ir)
    return {k: v for k, v in offered.items() if k in declared}


def _token(cfg: dict[str, Any], secrets: SealedSecrets) -> str | None:
    if cfg.get("token_secret"):
        return secrets[cfg["token_secret"]].strip()
    if cfg.get("token_env"):
        token = os.environ.get(cfg["token_env"])
        if not token:
            raise ConfigError(
                f"kfp.token_env names {cfg['token_env']}, which is not set; export the "
                "Kubeflow Pipelines token there (or seal it and set kfp.token_secret)"
            )
        return token
    return None


class Endpoint:
    """kfp.Client calls with modelworks errors: unreachable host, the server's own message."""

    def __init__(self, cfg: dict[str, Any], token: str | None) -> None:
        import kfp
        import urllib3

        self.cfg, self.host = cfg, cfg["host"]
        self.probe(token)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP >= 2.0.0b2"
            self.client = kfp.Client(
                host=self.host,
                existing_token=token,
                namespace=cfg.get("namespace") or "kubeflow",
                verify_ssl=cfg.get("verify_tls", True),
            )
        self.api = self.client._run_api.api_client
        pool = self.api.rest_client.pool_manager
        pool.connection_pool_kw["timeout"] = urllib3.Timeout(total=cfg.get("timeout", 30.0))
        pool.connection_pool_kw["retries"] = urllib3.Retry(total=2, backoff_factor=0.2)

    def probe(self, token: str | None) -> None:
        """GET healthz once: kfp.Client's own check retries a refusal for 25 s."""
        import ssl
        import urllib.error
        import urllib.request

        url = self.host.rstrip("/") + "/apis/v2beta1/healthz"
        req = urllib.request.Request(
            url, headers={"Authorization": f"Bearer {token}"} if token else {}
        )
        tls = None if self.cfg.get("verify_tls", True) else ssl._create_unverified_context()
        try:
            urllib.request.urlopen(req, timeout=self.cfg.get("timeout", 30.0), context=tls).close()
        except urllib.error.HTTPError as exc:
            raise PipelineError(
                f"Kubeflow Pipelines at {self.host} refused the health check: "
                f"HTTP {exc.code}: {_message(exc.read())}"
                + (" (check kfp.token_env / kfp.token_secret)" if exc.code in (401, 403) else "")
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise UnavailableError(
                f"Kubeflow Pipelines at {self.host} (kfp.host in modelworks.yaml) is "
                f"unreachable: {getattr(exc, 'reason', exc)}"
            ) from None

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import kfp_server_api
        import urllib3

        try:
            return fn(*args, **kwargs)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise UnavailableError(
                f"Kubeflow Pipelines at {self.host} (kfp.host in modelworks.yaml) is "
                f"unreachable while trying to {what}: {type(exc).__name__}: {exc}"
            ) from None
        except kfp_server_api.ApiException as exc:
            if exc.status == 409:
                raise ConflictError(f"{what}: {_message(exc.body)}") from None
            raise PipelineError(
                f"Kubeflow Pipelines at {self.host} refused to {what}: "
                f"HTTP {exc.status}: {_message(exc.body)}"
            ) from None

    def ensure_version(self, pipe: dict[str, Any], package: Path) -> tuple[str, str]:
        """(pipeline id, version id), uploading the pipeline and its version when new.

        Another worker may upload the same one between the lookup and the upload: the
        server's 409 sends this one back to the lookup.
        """
        c, name, version = self.client, pipe["name"], pipe["version"]
        note = f"modelworks pipeline {name} {version} (hash {pipe['hash'][:12]})"
        pid = self.call("look up the pipeline", c.get_pipeline_id, name)
        if pid is None:
            try:
                pid = self.call(
                    "upload the pipeline",
                    c.upload_pipeline,
                    str(package),
                    name,
                    note,
                    _ns(self.cfg),
                ).pipeline_id
            except ConflictError:
                pid = self.call("look up the pipeline", c.get_pipeline_id, name)
        vid = self._version_id(pid, version) if pid else None
        if vid is None:
            try:
                vid = self.call(
                    "upload the pipeline version",
                    c.upload_pipeline_version,
                    str(package),
                    version,
                    pipeline_id=pid,
                    description=note,
                ).pipeline_version_id
            except ConflictError:
                vid = self._version_id(pid, version)
        if not pid or not vid:
            raise PipelineError(
                f"Kubeflow Pipelines at {self.host} reported pipeline {name} {version} as "
                "existing but does not list it"
            )
        return pid, vid

    def _version_id(self, pipeline_id: str, version: str) -> str | None:
        flt = {
            "predicates": [{"operation": "EQUALS", "key": "display_name", "string_value": version}]
        }
        found = self.call(
            "list the pipeline versions",
            self.client.list_pipeline_versions,
            pipeline_id,
            filter=json.dumps(flt),
        )
        for v in found.pipeline_versions or []:
            if v.display_name == version:
                return str(v.pipeline_version_id)
        return None

    def start_run(self, job: Job, pipeline_id: str, version_id: str, params: dict[str, Any]) -> str:
        """Create the job's run (in kfp.experiment); its run id."""
        c = self.client
        with _quiet():
            try:
                exp = self.call("find the experiment", c.create_experiment, self.cfg["experiment"])
            except ConflictError:  # another worker created it between the lookup and ours
                exp = self.call("find the experiment", c.create_experiment, self.cfg["experiment"])
            run = self.call(
                "create the run",
                c.run_pipeline,
                experiment_id=exp.experiment_id,
                job_name=f"{job['model']}-{job['version']}-run{job['run_id']}",
                params=params,
                pipeline_id=pipeline_id,
                version_id=version_id,
                pipeline_root=self.cfg.get("pipeline_root"),
            )
        return str(run.run_id)

    def wait(self, run_id: str, timeout: float | None) -> Any:
        """The finished run; PipelineError with the server's message unless it succeeded."""
        deadline = time.monotonic() + (timeout or 3600.0)
        while True:
            run = self.call("read the run", self.client.get_run, run_id)
            state = str(run.state or "").upper()
            if state in DONE:
                break
            if time.monotonic() > deadline:
                with contextlib.suppress(ModelworksError):  # best effort: free the cluster
                    self.call("terminate the run", self.client.terminate_run, run_id)
                raise PipelineError(
                    f"KFP run {run_id} still {state or 'pending'} after {timeout}s "
                    "(executor.timeout); asked the server to terminate it"
                )
            time.sleep(self.cfg.get("poll_interval", 5.0))
        if state != "SUCCEEDED":
            why = run.error.message if run.error is not None and run.error.message else state
            raise PipelineError(f"KFP run {run_id} {state.lower()}: {why}")
        return run

    def collect(self, run: Any, kinds: dict[str, dict[str, str]], dest: Path) -> dict[str, float]:
        """Fetch the run's Model artifact into dest; return the values of its Metrics."""
        from modelworks.runs.kfp_artifacts import fetch, metrics_of

        models, metrics = [], []
        for task in (run.run_details.task_details if run.run_details else None) or []:
            types = kinds.get(task.display_name or "", {})
            for out_name, listed in (task.outputs or {}).items():
                for art_id in listed.artifact_ids or []:
                    kind = types.get(out_name)
                    if kind == MODEL:
                        models.append((out_name, art_id))
                    elif kind == METRICS:
                        metrics.append(art_id)
        if not models:
            raise PipelineError(f"KFP run {run.run_id} produced no Model artifact")
        named = [m for m in models if m[0] == "model"]
        (_, model_id) = named[0] if named or len(models) == 1 else _ambiguous(models, run.run_id)
        fetch(self.artifact(model_id), dest, self.cfg)
        values: dict[str, float] = {}
        for art_id in metrics:
            values.update(metrics_of(self.artifact(art_id), self.cfg))
        if not values:
            raise PipelineError(f"KFP run {run.run_id} logged no metrics in a Metrics artifact")
        return values

    def artifact(self, artifact_id: str) -> dict[str, Any]:
        """GET /apis/v2beta1/artifacts/{id}?view=DOWNLOAD: its uri, download_url, metadata."""
        got = self.call(
            f"read artifact {artifact_id}",
            self.api.call_api,
            f"/apis/v2beta1/artifacts/{artifact_id}",
            "GET",
            query_params=[("view", "DOWNLOAD")],
            header_params={"Accept": "application/json"},
            auth_settings=["Bearer"],
            response_type="object",
            _return_http_data_only=True,
        )
        return dict(got)


def _ambiguous(models: list[tuple[str, str]], run_id: str) -> tuple[str, str]:
    names = ", ".join(sorted(n for n, _ in models))
    raise PipelineError(
        f"KFP run {run_id} has several Model artifacts ({names}): name the one to register 'model'"
    )


def _ns(cfg: dict[str, Any]) -> str | None:
    return cfg.get("namespace") or None


def _message(body: Any) -> str:
    try:
        doc = json.loads(body)
    except (TypeError, ValueError):
        return str(body or "")[:500]
    return str(doc.get("message") or doc.get("error") or doc)[:500]


def _quiet() -> Any:
    """kfp.Client prints 'Run details: <link>' on stdout; keep the worker log clean of it."""
    import contextlib
    import io

    return contextlib.redirect_stdout(io.StringIO())
