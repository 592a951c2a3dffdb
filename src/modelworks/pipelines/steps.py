"""Running a pipeline's plain-Python steps: prepare → train → evaluate, with names injected.

A pipeline.py is ordinary code; each step asks for what it needs by parameter name:

    def prepare(data_path, params):           -> data (anything; a dict with X_train,
                                                  y_train, X_test, y_test is profiled)
    def train(data, params):                   -> model
    def evaluate(model, data):                 -> {"accuracy": 0.93, ...}
    def save(model, output_dir, data):         (optional; the runtime's default otherwise)
                                               -> None, or the model file's name; with None
                                                  the one file serving loads is found by suffix

Names the line supplies: data_path, data_paths, params, hyperparameters, output_dir, data,
model, seed, log, secrets (sealed secrets, unsealed on access: ``secrets["DB_PASSWORD"]``).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from modelworks.errors import PipelineError
from modelworks.pipelines.catalog import ENTRY_FILE


class MissingSecretError(PipelineError, KeyError):
    """A step asked for a secret that is not sealed in the workspace."""


class SealedSecrets(Mapping[str, str]):
    """Read-only view of secrets/<NAME>.sealed for steps; each value is unsealed on access."""

    def __init__(self, secrets_dir: Path | str | None, private_key: Path | str | None) -> None:
        self._dir = Path(secrets_dir) if secrets_dir else None
        self._key = Path(private_key) if private_key else None
        self.revealed: list[bytes] = []  # every value unsealed, for redaction (security/redact)

    def _names(self) -> list[str]:
        from modelworks.security.secrets import list_sealed

        return list_sealed(self._dir) if self._dir else []

    def raw(self, name: str) -> bytes:
        """The secret's bytes; MissingSecretError naming it when it is not sealed."""
        from modelworks.security.secrets import unseal

        if self._dir is None or self._key is None or name not in self._names():
            known = ", ".join(self._names()) or "none"
            raise MissingSecretError(
                f"step asked for secret {name!r}, which is not sealed in this workspace "
                f"(sealed: {known}); run `mw secret seal {name}`"
            )
        value = unseal(name, self._key, self._dir)
        if value not in self.revealed:
            self.revealed.append(value)
        return value

    def __getitem__(self, name: str) -> str:
        value = self.raw(name)
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise PipelineError(
                f"secret {name!r} is not UTF-8 text; use secrets.raw({name!r})"
            ) from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"SealedSecrets({self._names()})"  # names only, never values


STEP_ALIASES = {"prepare": ("prepare", "load"), "train": ("train",), "evaluate": ("evaluate",)}
_modules: dict[str, ModuleType] = {}


def load_module(source: Path, digest: str) -> ModuleType:
    """Import pipeline.py from a pipeline folder or snapshot, once per process and hash."""
    if digest in _modules:
        return _modules[digest]
    path = source / ENTRY_FILE
    name = f"mw_pipeline_{digest[:16]}"
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[str(source)]
    )
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
    raise PipelineError(
        f"{module.__file__}: no '{step}' function; a pipeline needs prepare, train and evaluate"
    )


def call(fn: Callable[..., Any], available: dict[str, Any]) -> Any:
    """Call fn with the available values its parameters name."""
    kwargs: dict[str, Any] = {}
    for pname, p in inspect.signature(fn).parameters.items():
        if pname in available:
            kwargs[pname] = available[pname]
        elif p.default is inspect.Parameter.empty and p.kind not in (
            p.VAR_KEYWORD,
            p.VAR_POSITIONAL,
        ):
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
        raise PipelineError(
            f"evaluate() must return a dict of metric name -> number, got {metrics!r:.100}"
        )
    ctx["metrics"] = {k: float(v) for k, v in metrics.items()}
    ctx["train_seconds"] = train_seconds
    save = getattr(module, "save", None)
    ctx["custom_save"] = save if callable(save) else None
    return ctx
