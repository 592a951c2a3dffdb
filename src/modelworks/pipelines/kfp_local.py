"""Running a Kubeflow pipeline locally with ``kfp.local``: its Model artifact and Metrics.

The pipeline runs unchanged with kfp's subprocess runner in the worker's own Python (no
Docker, no cluster, no pip: ``packages_to_install`` is left to the line's environment). The
model is the pipeline's ``Model`` artifact (the one named ``model`` when there are several)
and the metrics are the values its ``Metrics`` artifacts logged; both are read from each
task's executor output under the run's pipeline root.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from modelworks.artifacts.modelfiles import LOADABLE_SUFFIXES
from modelworks.errors import PipelineError
from modelworks.pipelines.kfp import arguments, find_pipeline, require_kfp

if TYPE_CHECKING:
    from kfp.dsl.graph_component import GraphComponent

MODEL_TYPE, METRICS_TYPE = "system.Model", "system.Metrics"
# kfp.kubernetes settings (platform spec keys) -> the call that set them.
K8S_CALLS = {
    "secretAsEnv": "use_secret_as_env",
    "secretAsVolume": "use_secret_as_volume",
    "configMapAsEnv": "use_config_map_as_env",
    "configMapAsVolume": "use_config_map_as_volume",
    "pvcMount": "mount_pvc",
    "nodeSelector": "add_node_selector",
    "nodeAffinity": "add_node_affinity",
    "tolerations": "add_toleration",
    "imagePullSecret": "set_image_pull_secrets",
    "imagePullPolicy": "set_image_pull_policy",
    "fieldPathAsEnv": "use_field_path_as_env",
    "podMetadata": "add_pod_label/add_pod_annotation",
    "activeDeadlineSeconds": "set_timeout",
    "emptyDirMounts": "empty_dir_mount",
    "genericEphemeralVolume": "add_ephemeral_volume",
}
_PER_CALL = frozenset(K8S_CALLS) - {"nodeSelector", "nodeAffinity", "imagePullSecret"}
_PASSTHROUGH = '"$0" "$@"\n'  # the install script's last line, without the pip installs
_lock = threading.Lock()  # kfp.local's configuration is process-global


class _Found:
    """What a finished local run left: Model artifacts (task, output name, path) and metrics."""

    def __init__(self) -> None:
        self.models: list[tuple[str, str, Path]] = []
        self.metrics: dict[str, float] = {}


def run_pipeline(
    module: ModuleType, job: dict[str, Any], available: dict[str, Any], log: logging.Logger
) -> dict[str, Any]:
    """Run the module's @dsl.pipeline locally; the ctx run_steps would return, with a save()."""
    require_kfp()
    pipeline = find_pipeline(module)
    if pipeline is None:
        raise PipelineError(f"{module.__file__}: no @dsl.pipeline function")
    offered = {
        "data_source": dict(job.get("data_source") or {}, local_path=str(available["data_path"])),
        "hyperparameters": available["hyperparameters"],
        "model_name": job["model"],
        "version": job["version"],
    }
    args = arguments(pipeline, offered)
    log.info("kfp pipeline %s with parameters %s", pipeline.name, ", ".join(args) or "none")
    spec = local_spec(pipeline, log)
    root = Path(available["output_dir"]).parent / "kfp-root"
    t0 = time.perf_counter()
    _run_local(spec, args, root)
    train_seconds = time.perf_counter() - t0
    found = collect(spec, root)
    model = pick_model(found, module.__file__ or "pipeline.py")
    if not found.metrics:
        log.warning("the pipeline logged no Metrics artifact: the version has no metrics")
    log.info("kfp model artifact %s (%s)", model, "folder" if model.is_dir() else "file")
    return dict(
        available,
        log=log,
        data=None,
        model=None,
        metrics=found.metrics,
        train_seconds=train_seconds,
        custom_save=_copier(model, job["runtime"]),
    )


def local_spec(pipeline: GraphComponent, log: logging.Logger) -> Any:
    """The pipeline's spec for a local run: no pip installs; kfp.kubernetes calls warned of."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec = pipeline_spec_pb2.PipelineSpec()
    spec.CopyFrom(pipeline.pipeline_spec)
    stripped = []
    for name, executor in spec.deployment_spec["executors"].items():
        if "container" not in executor or "command" not in executor["container"]:
            continue  # an importer or a container component: nothing to strip
        command = executor["container"]["command"]
        if len(command) > 2 and command[0] == "sh" and "pip install" in str(command[2]):
            command[2] = _PASSTHROUGH
            stripped.append(name.removeprefix("exec-"))
    if stripped:
        log.info(
            "not installing packages locally (kfp, packages_to_install) for %s: "
            "the line's Python runs them",
            ", ".join(sorted(stripped)),
        )
    for task, call in kubernetes_calls(pipeline):
        log.warning("kfp.kubernetes %s on task %s is ignored when running locally", call, task)
    return spec


def kubernetes_calls(pipeline: GraphComponent) -> list[tuple[str, str]]:
    """(task, call) for each kfp.kubernetes setting in the pipeline's platform spec."""
    from google.protobuf.struct_pb2 import ListValue

    platforms = pipeline.platform_spec.platforms
    if "kubernetes" not in platforms:
        return []
    executors = platforms["kubernetes"].deployment_spec.executors
    calls = []
    for label, config in executors.items():
        task = label.removeprefix("exec-")
        for key, value in config.items():
            # Each call of these appends one entry; the others set one value per task.
            n = len(value) if key in _PER_CALL and isinstance(value, ListValue) else 1
            calls += [(task, K8S_CALLS.get(key, key))] * max(1, n)
    return calls


def _run_local(spec: Any, args: dict[str, Any], root: Path) -> None:
    from kfp import local
    from kfp.local import pipeline_orchestrator

    with _lock:
        local.init(
            runner=local.SubprocessRunner(use_venv=False),
            pipeline_root=str(root),
            raise_on_error=True,
        )
        try:
            pipeline_orchestrator.run_local_pipeline(pipeline_spec=spec, arguments=args)
        except RuntimeError as exc:
            # A task failed: its traceback is in the log; the same inputs fail the same way.
            raise PipelineError(f"kfp pipeline failed: {_plain(str(exc))}") from None


def _plain(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def collect(spec: Any, root: Path) -> _Found:
    """Model artifacts and logged metrics of every task the local run finished."""
    types = _artifact_types(spec)
    found = _Found()
    for output in sorted(root.glob("*/*/executor_output.json")):
        task = output.parent.name
        produced = json.loads(output.read_text()).get("artifacts", {})
        for name, entry in sorted(produced.items()):
            kind = types.get((task, name))
            for artifact in entry.get("artifacts", []):
                if kind == MODEL_TYPE:
                    found.models.append((task, name, Path(artifact["uri"])))
                elif kind == METRICS_TYPE:
                    for key, value in artifact.get("metadata", {}).items():
                        if isinstance(value, (int, float)) and not isinstance(value, bool):
                            found.metrics[key] = float(value)
    return found


def _artifact_types(spec: Any) -> dict[tuple[str, str], str]:
    """(local task folder, output name) -> artifact schema title."""
    from kfp.local import executor_input_utils

    types = {}
    for cname, component in spec.components.items():
        task = executor_input_utils.get_local_task_resource_name(cname)
        for name, out in component.output_definitions.artifacts.items():
            types[(task, name)] = out.artifact_type.schema_title
    return types


def pick_model(found: _Found, where: str) -> Path:
    """The Model artifact's path: the only one, else the one named ``model``."""
    if not found.models:
        raise PipelineError(
            f"{where}: the kfp pipeline produced no Model artifact "
            "(a component needs an `Output[Model]` output)"
        )
    chosen = found.models
    if len(chosen) > 1:
        chosen = [m for m in found.models if m[1] == "model"]
        if len(chosen) != 1:
            names = ", ".join(f"{t}.{n}" for t, n, _ in found.models)
            raise PipelineError(
                f"{where}: the kfp pipeline produced several Model artifacts ({names}); "
                "name the one to register `model`"
            )
    path = chosen[0][2]
    if path.exists():
        return path
    siblings = sorted(path.parent.glob(path.name + ".*"))
    if len(siblings) == 1:  # a component that saved to f"{model.path}.joblib"
        return siblings[0]
    raise PipelineError(f"{where}: the Model artifact {chosen[0][0]}.{chosen[0][1]} wrote no file")


def _copier(model: Path, runtime: str) -> Callable[[Path], str | None]:
    """A save(output_dir) copying the Model artifact in; the line then checks it is servable."""

    def save(output_dir: Path) -> str | None:
        if model.is_dir():
            shutil.copytree(model, output_dir, dirs_exist_ok=True)
            return None
        name = model.name if model.suffix else model.name + _suffix(model, runtime)
        shutil.copy2(model, output_dir / name)
        return name

    return save


def _suffix(path: Path, runtime: str) -> str:
    """The suffix serving needs for a Model artifact file kfp named without one."""
    import zipfile

    if runtime == "sklearn":
        return ".skops" if zipfile.is_zipfile(path) else ".joblib"
    return LOADABLE_SUFFIXES.get(runtime, ("",))[0]
