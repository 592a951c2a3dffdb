"""Running a pipeline's plain-Python steps: prepare → train → evaluate, with names injected.

A pipeline.py is ordinary code; each step asks for what it needs by parameter name:

    def prepare(data_path, params):           -> data (anything; a dict with X_train,
                                                  y_train, X_test, y_test is profiled)
    def train(data, params):                   -> model
    def evaluate(model, data):                 -> {"accuracy": 0.93, ...}
    def save(model, output_dir, data):         (optional; the runtime's default otherwise)

Names the line supplies: data_path, data_paths, params, hyperparameters, output_dir, data,
model, seed, log.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from modelworks.errors import PipelineError
from modelworks.pipelines.catalog import ENTRY_FILE

STEP_ALIASES = {"prepare": ("prepare", "load"), "train": ("train",), "evaluate": ("evaluate",)}
_modules: dict[str, ModuleType] = {}


def load_module(source: Path, digest: str) -> ModuleType:
    """Import pipeline.py from a pipeline folder or snapshot, once per process and hash."""
    if digest in _modules:
        return _modules[digest]
    path = source / ENTRY_FILE
    name = f"mw_pipeline_{digest[:16]}"
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=[str(source)])
    if spec is None or spec.loader is None:
        raise PipelineError(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise PipelineError(f"{path}: import failed: {type(exc).__name__}: {exc}") from exc
    _modules[digest] = module
    return module


def find_step(module: ModuleType, step: str) -> Callable[..., Any]:
    """The function for a step (or its alias); PipelineError if the pipeline lacks it."""
    for name in STEP_ALIASES.get(step, (step,)):
        fn = getattr(module, name, None)
        if callable(fn):
            return fn  # type: ignore[no-any-return]
    raise PipelineError(f"{module.__file__}: no '{step}' function; a pipeline needs prepare, train and evaluate")


def call(fn: Callable[..., Any], available: dict[str, Any]) -> Any:
    """Call fn with the available values its parameters name."""
    kwargs: dict[str, Any] = {}
    for pname, p in inspect.signature(fn).parameters.items():
        if pname in available:
            kwargs[pname] = available[pname]
        elif p.default is inspect.Parameter.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            raise PipelineError(
                f"step {fn.__name__}() asks for {pname!r}, which the line does not supply "
                f"(it supplies: {', '.join(sorted(available))})"
            )
    return fn(**kwargs)


def run_steps(module: ModuleType, available: dict[str, Any], log: logging.Logger) -> dict[str, Any]:
    """Run prepare, train, evaluate; return data, model, metrics and the train time."""
    import time

    ctx = dict(available, log=log)
    ctx["data"] = call(find_step(module, "prepare"), ctx)
    t0 = time.perf_counter()
    ctx["model"] = call(find_step(module, "train"), ctx)
    train_seconds = time.perf_counter() - t0
    metrics = call(find_step(module, "evaluate"), ctx)
    if not isinstance(metrics, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) for k, v in metrics.items()
    ):
        raise PipelineError(f"evaluate() must return a dict of metric name -> number, got {metrics!r:.100}")
    ctx["metrics"] = {k: float(v) for k, v in metrics.items()}
    ctx["train_seconds"] = train_seconds
    save = getattr(module, "save", None)
    ctx["custom_save"] = save if callable(save) else None
    return ctx
