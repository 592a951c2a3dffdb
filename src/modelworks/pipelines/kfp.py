"""Kubeflow pipelines as modelworks pipelines: finding the ``@dsl.pipeline`` in a pipeline.py.

A pipeline folder whose pipeline.py defines a kfp SDK 2 ``@dsl.pipeline`` function is a
modelworks pipeline like any other (versioned, snapshotted, fingerprinted by its files). This
module only recognises one; running it locally (``kfp.local``), submitting it to a Kubeflow
Pipelines endpoint and compiling it to IR YAML build on what it returns.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from modelworks.errors import ConfigError, PipelineError
from modelworks.pipelines.catalog import ENTRY_FILE

if TYPE_CHECKING:
    from kfp.dsl.graph_component import GraphComponent

EXTRA = "pip install 'modelworks[kfp]'"
PIPELINE_ATTR = "PIPELINE"  # names the pipeline when pipeline.py defines several
# The parameters modelworks supplies, when the pipeline declares them.
SUPPLIED = ("data_source", "hyperparameters", "model_name", "version")
_MARK = re.compile(rb"^\s*@\s*(?:kfp\s*\.\s*)?dsl\s*\.\s*pipeline\b|^\s*@\s*pipeline\b", re.M)


def require_kfp() -> ModuleType:
    """The kfp package, or a ConfigError naming the extra that installs it."""
    try:
        import kfp
    except ImportError:
        raise ConfigError(
            f"this pipeline is a Kubeflow pipeline and the kfp SDK is not installed: {EXTRA}"
        ) from None
    module: ModuleType = kfp  # kfp ships no type hints: mypy may see it as Any
    return module


def looks_like_kfp(source: Path) -> bool:
    """True when the folder's pipeline.py decorates a function with ``@dsl.pipeline``.

    A text check, so plan and the catalog can tell without importing the user's code or kfp.
    """
    try:
        return bool(_MARK.search((source / ENTRY_FILE).read_bytes()))
    except OSError:
        return False


def find_pipeline(module: ModuleType) -> GraphComponent | None:
    """The module's ``@dsl.pipeline`` function; None when it defines none.

    With several, ``PIPELINE = <function>`` in pipeline.py says which; otherwise a
    PipelineError lists them.
    """
    from kfp.dsl.graph_component import GraphComponent

    chosen = getattr(module, PIPELINE_ATTR, None)
    if chosen is not None:
        if not isinstance(chosen, GraphComponent):
            raise PipelineError(
                f"{module.__file__}: {PIPELINE_ATTR} must be a @dsl.pipeline function, "
                f"got {type(chosen).__name__}"
            )
        return chosen
    found = {n: v for n, v in vars(module).items() if isinstance(v, GraphComponent)}
    if len(found) > 1:
        raise PipelineError(
            f"{module.__file__} defines several @dsl.pipeline functions "
            f"({', '.join(sorted(found))}); set {PIPELINE_ATTR} = <the one to run>"
        )
    return next(iter(found.values()), None)


def declared_inputs(pipeline: GraphComponent) -> dict[str, Any]:
    """The pipeline's parameters: name -> kfp InputSpec."""
    return dict(pipeline.component_spec.inputs or {})


def arguments(pipeline: GraphComponent, offered: dict[str, Any]) -> dict[str, Any]:
    """Of the values modelworks offers, those the pipeline declares as parameters."""
    inputs = declared_inputs(pipeline)
    return {k: v for k, v in offered.items() if k in inputs}
