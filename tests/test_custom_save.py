"""A pipeline's own save(): the real model file is recorded and served, and what the server
could not load fails the run at apply time and is never deployed."""

from __future__ import annotations

import json

import pytest
import yaml

from modelworks.apply import apply
from modelworks.registry.store import Store
from modelworks.runs.executor import LocalExecutor
from modelworks.serving.runtimes import load_model
from modelworks.testing import TINY_PIPELINE, write_pipeline, write_spec
from modelworks.workspace import Workspace

RENAMED = (
    TINY_PIPELINE
    + """

def save(model, output_dir):
    import skops.io as sio

    sio.dump(model, output_dir / "classifier.skops")
"""
)

RETURNED = (
    TINY_PIPELINE
    + """

def save(model, output_dir):
    import skops.io as sio

    sio.dump(model, output_dir / "a.skops")
    sio.dump(model, output_dir / "b.skops")
    return "b.skops"
"""
)

NOTHING_LOADABLE = (
    TINY_PIPELINE
    + """

def save(model, output_dir):
    (output_dir / "weights.bin").write_bytes(b"not a model")
"""
)

CORRUPT = (
    TINY_PIPELINE
    + """

def save(model, output_dir):
    (output_dir / "model.skops").write_bytes(b"PK not really a zip")
"""
)

AMBIGUOUS = (
    TINY_PIPELINE
    + """

def save(model, output_dir):
    import skops.io as sio

    sio.dump(model, output_dir / "a.skops")
    sio.dump(model, output_dir / "b.skops")
"""
)


def _apply_one(ws: Workspace, source: str, name: str = "custom"):  # type: ignore[no-untyped-def]
    write_pipeline(ws, name="own-save", source=source)
    write_spec(ws, name, "data/set0/data.csv", pipeline="own-save")
    return apply(ws, Store(ws.registry_url), executor=LocalExecutor(1), names=[name])


@pytest.mark.parametrize(
    ("source", "expected"), [(RENAMED, "classifier.skops"), (RETURNED, "b.skops")]
)
def test_the_file_save_wrote_is_recorded_and_loads(
    fleet: Workspace, source: str, expected: str
) -> None:
    result = _apply_one(fleet, source)
    assert [t["name"] for t in result.trained] == ["custom"]
    cfg = yaml.safe_load((fleet.root / "deploy/test/custom/config.yaml").read_text())
    from modelworks.artifacts.oci import OCIStore

    meta = json.loads(OCIStore(fleet.oci_dir).read_file(cfg["artifact_digest"], "metadata.json"))
    assert meta["model_file"] == expected
    assert meta["inputs"][0]["shape"] == [-1, 4]
    out = fleet.root / "extracted"
    OCIStore(fleet.oci_dir).extract(cfg["artifact_digest"], out)
    loaded = load_model(out, name="custom", version=cfg["version"], digest="", runtime="sklearn")
    assert loaded.predict(__import__("numpy").zeros((1, 4))).shape == (1,)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (NOTHING_LOADABLE, "save() wrote no file the sklearn runtime can load"),
        (CORRUPT, "cannot be served by the sklearn runtime"),
        (AMBIGUOUS, "several files the sklearn runtime could load (a.skops, b.skops)"),
    ],
    ids=["nothing-loadable", "corrupt", "ambiguous"],
)
def test_what_serving_cannot_load_fails_at_apply_and_is_never_deployed(
    fleet: Workspace, source: str, message: str
) -> None:
    result = _apply_one(fleet, source)
    assert [f["name"] for f in result.failed] == ["custom"]
    assert message in result.failed[0]["error"]
    assert not (fleet.root / "deploy/test/custom").exists()
    runs = Store(fleet.registry_url)
    from modelworks.registry.queries import runs as run_rows

    rows = run_rows(runs, model="custom")
    assert rows[0]["status"] == "failed"
    assert rows[0]["attempts"] == 1  # a wrong model file is not retried
