"""The Ray executor on a real local Ray: same results as the pool, artifacts on the driver."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from modelworks import _git
from modelworks.apply import apply
from modelworks.artifacts.baselayer import base_layer
from modelworks.artifacts.oci import OCIStore
from modelworks.data.dvc import file_md5
from modelworks.registry.store import Store
from modelworks.runs.executor import LocalExecutor
from modelworks.testing import make_workspace, small_fleet, write_pipeline, write_spec
from modelworks.workspace import Workspace

ray = pytest.importorskip(
    "ray", reason="the ray package is not installed: pip install 'ray>=2.30,<3'"
)

from modelworks.runs.ray_executor import CACHE_ENV, RayExecutor  # noqa: E402

pytestmark = pytest.mark.ray

BROKEN_PIPELINE = """\
import numpy as np


def prepare(data_path, params):
    table = np.loadtxt(data_path, delimiter=",", skiprows=1, ndmin=2)
    return {"X_train": table[:, :-1], "y_train": table[:, -1]}


def train(data, params):
    raise RuntimeError("this pipeline is broken on purpose")


def evaluate(model, data):
    return {}
"""


SECRET_PIPELINE = """\
import numpy as np
from sklearn.linear_model import LogisticRegression


def prepare(data_path, secrets):
    table = np.loadtxt(data_path, delimiter=",", skiprows=1, ndmin=2)
    return {"X": table[:, :-1], "y": table[:, -1].astype(int), "n": len(secrets["API_TOKEN"])}


def train(data):
    return LogisticRegression().fit(data["X"], data["y"])


def evaluate(model, data):
    accuracy = float((model.predict(data["X"]) == data["y"]).mean())
    return {"accuracy": accuracy, "token_len": data["n"]}
"""

STUCK_OR_DYING_PIPELINE = """\
import os, time

import numpy as np


def prepare(data_path, params):
    return {"X_train": np.zeros((4, 1)), "y_train": np.zeros(4)}


def train(data, params):
    if params["mode"] == "stuck":
        time.sleep(600)
    os._exit(3)


def evaluate(model, data):
    return {}
"""


@pytest.fixture
def ray_cache(ray_local: Path) -> Path:
    """The session's shared local Ray instance (see conftest), its workers' cache folder."""
    return ray_local


def _versions(store: Store) -> dict[str, tuple[str, str, dict[str, Any]]]:
    from modelworks.registry.queries import show

    out = {}
    for name in ("model-0", "model-1", "model-2"):
        v = show(store, name)["versions"][0]
        out[name] = (v["version"], v["status"], v["metrics"])
    return out


def _repackaged(ws: Workspace, name: str, digest: str, scratch: Path) -> str:
    """The digest OCIStore.write_image gives the image's files and annotations on this machine."""
    store = OCIStore(ws.oci_dir)
    files = store.extract(digest, scratch / "files")
    notes = store.manifest(digest)["annotations"]
    target = OCIStore(scratch / "oci")
    base = base_layer(target, ws.settings.oci.base_image)  # built here, as the remote did
    return target.write_image(
        name, notes["org.opencontainers.image.version"], files, notes, base
    ).digest


def _files(ws: Workspace, digest: str) -> dict[str, bytes | None]:
    """The image's files; content only for those not stamped with time, serials or random nonces."""
    folder = OCIStore(ws.oci_dir).extract(digest, ws.root.parent / f"x-{digest[7:19]}")
    stable = {"metadata.json", "metrics.json", "profile.json"}
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() if p.name in stable else None
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_ray_matches_local_pool(tmp_path: Path, ray_cache: Path) -> None:
    wss = {kind: make_workspace(tmp_path / kind) for kind in ("ray", "local")}
    for ws in wss.values():
        small_fleet(ws)
    stores = {kind: Store(ws.registry_url) for kind, ws in wss.items()}
    seen: list[dict[str, Any]] = []
    data_cache = ray_cache / "data"  # shared by the session's Ray tests: count what is new
    before = set(data_cache.iterdir()) if data_cache.is_dir() else set()
    by_ray = apply(wss["ray"], stores["ray"], executor=RayExecutor(2), on_result=seen.append)
    by_pool = apply(wss["local"], stores["local"], executor=LocalExecutor(1))

    assert by_ray.ok
    assert len(by_ray.trained) == 3
    assert len(seen) == 3
    assert _versions(stores["ray"]) == _versions(stores["local"])
    ray_digests = {t["name"]: t["digest"] for t in by_ray.trained}
    pool_digests = {t["name"]: t["digest"] for t in by_pool.trained}
    for name, digest in ray_digests.items():
        # Repackaging the driver's files gives the driver's digest: blobs came back unchanged.
        assert _repackaged(wss["ray"], name, digest, tmp_path / f"re-{name}") == digest
        # Same files, same metrics/metadata/profile (skops zips, SBOMs, signatures are stamped).
        assert _files(wss["ray"], digest) == _files(wss["local"], pool_digests[name])

    shown = subprocess.run(
        ["mw", "show", "model-1", "--json", "-C", str(wss["ray"].root)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    artifact = json.loads(shown)["artifact"]
    assert artifact["digest"] == ray_digests["model-1"]
    assert Path(artifact["oci_layout"]).is_relative_to(wss["ray"].oci_dir)
    OCIStore(wss["ray"].oci_dir).verify(artifact["digest"])
    files = OCIStore(wss["ray"].oci_dir).extract(artifact["digest"], tmp_path / "shown")
    if (files / "model.sig").exists():  # signed on the worker with the key the driver sent
        from modelworks.artifacts.sign import verify_dir

        verify_dir(files, wss["ray"].path(wss["ray"].settings.signing.public_key))
    if shutil.which("skopeo"):
        out = subprocess.run(
            ["skopeo", "inspect", "--raw", artifact["skopeo"]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert json.loads(out)["annotations"]["dev.modelworks.model"] == "model-1"

    log = Path(_log(stores["ray"], seen[0]["run_id"])).read_text()
    assert "training" in log
    assert "packaged sha256:" in log
    assert len(set(data_cache.iterdir()) - before) <= 2  # the fleet's two data files
    assert {f.name for f in data_cache.iterdir()} >= {
        file_md5(f) for f in wss["ray"].data_dir.rglob("*.csv")
    }
    assert [p.name for p in (ray_cache / "pipelines").iterdir()] == [_pipeline_hash(stores["ray"])]
    assert list((ray_cache / "work").iterdir()) == []  # scratch (and any key copy) is gone

    again = apply(wss["ray"], stores["ray"], executor=RayExecutor(2))
    assert again.trained == []
    assert sorted(again.skipped) == ["model-0", "model-1", "model-2"]


def test_ray_tests_share_one_local_instance(ray_cache: Path) -> None:
    """The executor reuses the session's instance instead of starting (and stopping) its own."""
    assert ray.is_initialized()
    node = ray.get_runtime_context().get_node_id()
    executor = RayExecutor(2)
    assert executor.connect() is ray
    executor.close()
    assert ray.is_initialized()  # close() left the shared instance running
    assert ray.get_runtime_context().get_node_id() == node
    assert os.environ[CACHE_ENV] == str(ray_cache)


def test_ray_reports_a_broken_pipeline_and_trains_the_rest(tmp_path: Path, ray_cache: Path) -> None:
    from modelworks.registry.queries import runs
    from modelworks.security.keys import seal_secret

    ws = make_workspace(tmp_path / "ws")
    small_fleet(ws, models=1)
    write_pipeline(ws, "broken", source=BROKEN_PIPELINE)
    write_spec(ws, "bad-model", "data/set0/data.csv", pipeline="broken")
    write_pipeline(ws, "secret", source=SECRET_PIPELINE)
    write_spec(ws, "uses-secret", "data/set1/data.csv", pipeline="secret")
    _git.commit(ws.root, ["models", "pipelines"], "a broken model and one with a secret")
    store = Store(ws.registry_url)
    seal_secret(ws, store, "API_TOKEN", b"0123456789abc", actor="alice")

    result = apply(ws, store, executor=RayExecutor(2))

    assert sorted(t["name"] for t in result.trained) == ["model-0", "uses-secret"]
    # The sealed secret and the sealing key reached the worker; nothing private stays there.
    by_name = {t["name"]: t for t in result.trained}
    assert by_name["uses-secret"]["metrics"]["token_len"] == 13
    assert not list(ray_cache.rglob("*.pem"))
    assert [f["name"] for f in result.failed] == ["bad-model"]
    assert "broken on purpose" in result.failed[0]["error"]
    bad = runs(store, model="bad-model", limit=5)
    assert bad[0]["status"] == "failed"
    assert (
        "RuntimeError: this pipeline is broken on purpose"
        in Path(_log(store, bad[0]["id"])).read_text()
    )


def _log(store: Store, run_id: int) -> str:
    from sqlalchemy import select

    from modelworks.registry.models import Run

    with store.session() as s:
        path = s.scalar(select(Run.log_path).where(Run.id == run_id))
    assert path
    return str(path)


def _pipeline_hash(store: Store) -> str:
    from sqlalchemy import select

    from modelworks.registry.models import PipelineVersion

    with store.session() as s:
        return str(s.scalar(select(PipelineVersion.hash)))


def _warm_workers() -> None:
    """Import the worker's modules in both Ray workers, so the timeout below only sees training."""

    @ray.remote(num_cpus=1)
    def warm() -> int:
        import time

        import modelworks.runs.worker  # noqa: F401

        time.sleep(0.5)
        return os.getpid()

    assert len(set(ray.get([warm.remote(), warm.remote()]))) == 2


@pytest.mark.slow
def test_ray_kills_a_stuck_task_and_reports_a_dead_worker(tmp_path: Path, ray_cache: Path) -> None:
    ws = make_workspace(tmp_path / "ws", executor={"retries": 0})
    small_fleet(ws, models=1)
    write_pipeline(ws, "bad", source=STUCK_OR_DYING_PIPELINE)
    for mode in ("stuck", "dies"):
        write_spec(
            ws, mode, "data/set0/data.csv", pipeline="bad", model_hyperparameters={"mode": mode}
        )
    _git.commit(ws.root, ["models", "pipelines"], "a stuck and a dying model")
    store = Store(ws.registry_url)

    _warm_workers()
    result = apply(ws, store, executor=RayExecutor(2, timeout=6))

    assert [t["name"] for t in result.trained] == ["model-0"]
    errors = {f["name"]: f["error"] for f in result.failed}
    assert "timed out after 6s" in errors["stuck"]
    assert errors["dies"].startswith("ray task failed:")


@pytest.mark.slow
def test_mw_apply_with_executor_ray_starts_a_local_instance(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", executor={"kind": "ray", "workers": 1})
    small_fleet(ws, models=2)
    env = {**os.environ, CACHE_ENV: str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        ["mw", "apply", "--json", "-C", str(ws.root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert sorted(t["name"] for t in report["trained"]) == ["model-0", "model-1"]
    assert (tmp_path / "cache" / "pipelines").is_dir()  # the jobs ran as Ray tasks
