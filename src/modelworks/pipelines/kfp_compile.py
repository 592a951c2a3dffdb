"""Compiling a modelworks pipeline to Kubeflow Pipelines IR YAML (`mw export kfp`).

A Kubeflow pipeline (its pipeline.py has a ``@dsl.pipeline``) compiles as it is. A plain
pipeline (prepare/train/evaluate functions) is wrapped in three lightweight components
whose code is generic and whose ``sources`` input carries the pipeline folder's files as a
constant, so the IR really runs the user's steps:

    prepare(sources, data_source, hyperparameters)             -> data: Dataset (pickle)
    train(sources, data, hyperparameters)                      -> model: Model (servable file)
                                                                  trained: Artifact (pickle)
    evaluate(sources, data, trained)                           -> metrics: Metrics
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelworks.errors import PipelineError
from modelworks.pipelines.catalog import ENTRY_FILE, folder_files
from modelworks.pipelines.kfp import find_pipeline, looks_like_kfp, require_kfp

if TYPE_CHECKING:
    from kfp.dsl.graph_component import GraphComponent

BASE_IMAGE = "python:3.11"
REQUIREMENTS_FILE = "requirements.txt"


def compile_folder(source: Path, name: str, version: str) -> str:
    """The IR YAML of the pipeline in `source` (a pipeline folder or snapshot)."""
    require_kfp()
    from kfp import compiler

    pipeline = kfp_pipeline(source, version) if looks_like_kfp(source) else wrap_plain(source, name)
    with tempfile.TemporaryDirectory(prefix="mw-kfp-") as tmp:
        out = Path(tmp) / "pipeline.yaml"
        try:
            compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(out))
        except Exception as exc:  # the kfp compiler raises plain exceptions for bad pipelines
            raise PipelineError(
                f"{source / ENTRY_FILE}: the kfp compiler rejected the pipeline: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return out.read_text()


def kfp_pipeline(source: Path, version: str) -> GraphComponent:
    """The ``@dsl.pipeline`` function defined in the folder's pipeline.py."""
    from modelworks.pipelines.catalog import folder_hash
    from modelworks.pipelines.steps import load_module

    module = load_module(source, folder_hash(source))
    found = find_pipeline(module)
    if found is None:
        raise PipelineError(f"{source / ENTRY_FILE}: no @dsl.pipeline function found")
    return found


def bundle(source: Path) -> str:
    """The folder's text files, and the components' helper, as JSON {relative path: text}."""
    from modelworks.pipelines._kfp_steps import HELPER, HELPER_FILE

    files = {HELPER_FILE: HELPER}
    for f in folder_files(source):
        try:
            files[f.relative_to(source).as_posix()] = f.read_text()
        except UnicodeDecodeError:
            raise PipelineError(
                f"{f}: a plain pipeline exported to KFP carries its folder as text; "
                "this file is binary"
            ) from None
    return json.dumps(files, sort_keys=True)


def wrap_plain(source: Path, name: str) -> GraphComponent:
    """A ``@dsl.pipeline`` running the folder's prepare/train/evaluate as components."""
    from kfp import dsl

    from modelworks.pipelines import _kfp_steps as steps

    sources = bundle(source)
    for step in ("train", "evaluate"):
        if f"def {step}" not in json.loads(sources).get(ENTRY_FILE, ""):
            raise PipelineError(f"{source / ENTRY_FILE}: no '{step}' function to export")
    reqs = source / REQUIREMENTS_FILE
    packages = _requirements(reqs) if reqs.is_file() else None
    make = dsl.component(base_image=BASE_IMAGE, packages_to_install=packages)
    prepare_op, train_op, evaluate_op = make(steps.prepare), make(steps.train), make(steps.evaluate)

    return steps.plain_pipeline(name, sources, prepare_op, train_op, evaluate_op)


def _requirements(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def parameters(ir: dict[str, Any]) -> dict[str, Any]:
    """The root inputDefinitions parameters of a loaded IR document."""
    return dict(ir.get("root", {}).get("inputDefinitions", {}).get("parameters", {}))


def artifact_outputs(ir: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Task name -> {output name: schemaTitle} of the root DAG's tasks (system.Model, ...)."""
    comps = ir.get("components", {})
    found: dict[str, dict[str, str]] = {}
    for task, spec in ir.get("root", {}).get("dag", {}).get("tasks", {}).items():
        comp = comps.get(spec.get("componentRef", {}).get("name", ""), {})
        arts = comp.get("outputDefinitions", {}).get("artifacts", {})
        found[task] = {n: a.get("artifactType", {}).get("schemaTitle", "") for n, a in arts.items()}
    return found
