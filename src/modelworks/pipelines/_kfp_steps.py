"""The lightweight KFP components that run a plain pipeline's steps (see kfp_compile).

kfp serialises each function's source into the IR, so each is self-contained: it writes
the ``sources`` bundle (the pipeline folder, plus HELPER as _mw_kfp.py) to a temporary
folder and calls the user's step through the helper. No ``from __future__ import
annotations`` here: kfp reads the parameter types from the signatures.
"""

from typing import Any

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

HELPER_FILE = "_mw_kfp.py"
HELPER = '''\
"""Loads a modelworks pipeline.py inside a KFP component and calls its steps by name."""
import importlib.util
import inspect
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

_MODULE = None


def module():
    global _MODULE
    if _MODULE is None:
        root = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(root, "pipeline.py")
        spec = importlib.util.spec_from_file_location("mw_pipeline", path)
        _MODULE = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_MODULE)
    return _MODULE


def step(name, *aliases):
    for n in (name, *aliases):
        fn = getattr(module(), n, None)
        if callable(fn):
            return fn
    raise RuntimeError(f"pipeline.py has no {name}() step")


def call(fn, names):
    wanted = inspect.signature(fn).parameters
    missing = [p for p, v in wanted.items() if p not in names and v.default is v.empty
               and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)]
    if missing:
        raise RuntimeError(f"step {fn.__name__}() asks for {missing}, not supplied on KFP")
    return fn(**{k: v for k, v in names.items() if k in wanted})


def fetch(source):
    """A local path to the data: data_source's local_path, an s3 object, else its path."""
    if source.get("local_path"):
        return Path(source["local_path"])
    if source.get("type") == "s3" and source.get("key"):
        import boto3

        dest = Path(tempfile.mkdtemp(prefix="mw-data-")) / os.path.basename(source["key"])
        url = source.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
        s3 = boto3.client("s3", endpoint_url=url, region_name=source.get("region"))
        s3.download_file(source["bucket"], source["key"], str(dest))
        return dest
    path = source.get("path") or source.get("dataset")
    if not path:
        raise RuntimeError(f"data_source {source} names no file this component can read")
    return Path(path)


def dump(obj, path):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def load(path):
    with open(path, "rb") as fh:
        return pickle.load(fh)


def save(model, data, folder):
    """Write the servable model file into folder: the pipeline's save(), else skops/joblib."""
    os.makedirs(folder, exist_ok=True)
    custom = getattr(module(), "save", None)
    if callable(custom):
        call(custom, {"model": model, "output_dir": Path(folder), "data": data})
        return
    try:
        import skops.io as sio
        sio.dump(model, os.path.join(folder, "model.skops"))
    except ImportError:
        import joblib
        joblib.dump(model, os.path.join(folder, "model.joblib"))
'''


def prepare(
    sources: str,
    data_source: dict,  # type: ignore[type-arg]
    hyperparameters: dict,  # type: ignore[type-arg]
    data: Output[Dataset],
) -> None:
    """Run the pipeline's prepare() (or load()) on the data; pickle what it returns."""
    import json
    import os
    import sys
    import tempfile

    root = tempfile.mkdtemp(prefix="mw-pipeline-")
    for rel, text in json.loads(sources).items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "w") as fh:
            fh.write(text)
    sys.path.insert(0, root)
    import _mw_kfp as mw

    path = mw.fetch(data_source)
    names = {"data_path": path, "data_paths": [path], "params": hyperparameters}
    names["hyperparameters"] = hyperparameters
    mw.dump(mw.call(mw.step("prepare", "load"), names), data.path)


def train(
    sources: str,
    data: Input[Dataset],
    hyperparameters: dict,  # type: ignore[type-arg]
    model: Output[Model],
    trained: Output[Artifact],
) -> None:
    """Run train(); the model folder holds the servable file, `trained` the pickled object."""
    import json
    import os
    import sys
    import tempfile

    root = tempfile.mkdtemp(prefix="mw-pipeline-")
    for rel, text in json.loads(sources).items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "w") as fh:
            fh.write(text)
    sys.path.insert(0, root)
    import _mw_kfp as mw

    prepared = mw.load(data.path)
    names = {"data": prepared, "params": hyperparameters, "hyperparameters": hyperparameters}
    fitted = mw.call(mw.step("train"), names)
    mw.dump(fitted, trained.path)
    mw.save(fitted, prepared, model.path)


def evaluate(
    sources: str,
    data: Input[Dataset],
    trained: Input[Artifact],
    metrics: Output[Metrics],
) -> None:
    """Run evaluate(); log each metric and write them as JSON at the artifact's path."""
    import json
    import os
    import sys
    import tempfile

    root = tempfile.mkdtemp(prefix="mw-pipeline-")
    for rel, text in json.loads(sources).items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "w") as fh:
            fh.write(text)
    sys.path.insert(0, root)
    import _mw_kfp as mw

    names = {"model": mw.load(trained.path), "data": mw.load(data.path)}
    scores = mw.call(mw.step("evaluate"), names)
    values = {str(k): float(v) for k, v in scores.items()}
    for name, value in values.items():
        metrics.log_metric(name, value)
    with open(metrics.path, "w") as fh:
        json.dump(values, fh)


def plain_pipeline(
    name: str, sources: str, prepare_op: Any, train_op: Any, evaluate_op: Any
) -> Any:
    """The ``@dsl.pipeline`` chaining the three components, with modelworks' parameters."""

    @dsl.pipeline(name=name, description=f"modelworks pipeline {name} (plain steps)")  # type: ignore[untyped-decorator]
    def wrapped(
        data_source: dict,  # type: ignore[type-arg]
        hyperparameters: dict = {},  # type: ignore[type-arg]  # noqa: B006 - kfp reads defaults
        model_name: str = "",
        version: str = "",
    ) -> None:
        prep = prepare_op(sources=sources, data_source=data_source, hyperparameters=hyperparameters)
        fit = train_op(sources=sources, data=prep.outputs["data"], hyperparameters=hyperparameters)
        evaluate_op(sources=sources, data=prep.outputs["data"], trained=fit.outputs["trained"])

    return wrapped
