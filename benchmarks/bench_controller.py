"""Benchmark the controller and the monitoring pass.

    python benchmarks/bench_controller.py latency --models 1000
    python benchmarks/bench_controller.py memory --models 9000
    python benchmarks/bench_controller.py monitor --models 1000 --requests 10000
    python benchmarks/bench_controller.py all --json out.json

latency: a 1,000-model workspace (tiny test pipeline; the registry is seeded from the plan so
  the other 999 models count as trained), the controller in this process and the `test`
  inference app in-process. One commit changes one spec; the controller pass starts at once
  (as a webhook-poked pass does; with polling add on average half of controller.poll_interval).
  Split: detection (commit -> the job reaches the executor: git, plan of every spec, enqueue,
  claim), training (the job in the worker pool: train, scan, profile, sign, package),
  deployment (record, deploy commit, server reconcile, lazy load with signature check, first
  answer of the new version).
memory: resident memory of a `Controller` process after two passes over N specs.
monitor: one monitoring pass over N deployed models with R logged requests each (4 features;
  half the models get shifted traffic), profiles already cached (the steady state).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = 4  # modelworks.testing.write_dataset's default


def model_name(i: int) -> str:
    """The name of model i."""
    return f"m{i:05d}"


def build(root: Path, n: int) -> None:
    """A committed workspace of n specs over a few hundred datasets (the tiny test pipeline)."""
    from modelworks import _git
    from modelworks.data.add import add
    from modelworks.testing import make_workspace, write_dataset, write_pipeline

    ws = make_workspace(root)
    write_pipeline(ws)
    datasets = max(2, min(300, n // 30))
    for j in range(datasets):
        path = write_dataset(ws, f"data/set{j:04d}/data.csv", seed=j)
        add(ws, path, update_specs=False, commit=False)
    ws.models_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        spec = {
            "data_source": {"type": "dvc", "dataset": f"data/set{i % datasets:04d}/data.csv"},
            "model_name": model_name(i),
            "kubeflow_pipeline": "tiny",
            "kubeflow_pipeline_version": "tiny-v1",
            "runtime_name": "sklearn",
            "model_hyperparameters": {"C": round(0.5 + (i % 17) / 8, 4)},
        }
        (ws.models_dir / f"{model_name(i)}.json").write_text(json.dumps(spec, indent=2))
    _git.commit(root, ["models", "pipelines", "data"], f"benchmark fleet: {n} models")


def seed_registry(root: Path) -> None:
    """Register every planned model without training it (see fleet.seed_registry)."""
    from fleet import seed_registry as seed  # benchmarks/ is on sys.path when run as a script

    seed(root)


class TimedExecutor:
    """Wraps the controller's executor and notes when jobs arrive and when the last one ends."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name = inner, inner.name
        self.first: float | None = None
        self.last: float | None = None

    def stop(self) -> None:
        self.inner.stop()

    def run(self, jobs: list[dict[str, Any]]) -> Any:
        self.first = self.first or time.perf_counter()
        yield from self.inner.run(jobs)
        self.last = time.perf_counter()


def latency(n: int, workdir: Path) -> dict[str, Any]:
    """Commit one spec change in an n-model workspace; time until the new version answers."""
    import httpx
    from anyio.from_thread import start_blocking_portal

    from modelworks import _git
    from modelworks.controller import Controller
    from modelworks.controller.executor import GracefulExecutor
    from modelworks.registry.store import Store
    from modelworks.serving import create_app
    from modelworks.workspace import Workspace

    root = workdir / "latency"
    name = model_name(n // 2)
    t = time.perf_counter()
    build(root, n)
    _only_deploy(root, name)
    seed_registry(root)
    setup = time.perf_counter() - t
    ws = Workspace.load(root)
    store = Store(ws.registry_url)
    _unseed(store, name)  # the first pass trains it for real, so it has an artifact to serve
    timed = TimedExecutor(GracefulExecutor(store, 2, timeout=600))
    ctl = Controller(ws, store, executor=timed)
    t = time.perf_counter()
    first = ctl.tick()
    first_s = time.perf_counter() - t
    assert not first.errors, first.errors
    t = time.perf_counter()
    ctl.tick()
    idle_s = time.perf_counter() - t
    app = create_app(ws, "test", sample_rate=0.0, reconcile_in_background=False)
    marks: dict[str, float] = {}
    with start_blocking_portal() as portal:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mw")
        life = app.router.lifespan_context(app)
        portal.call(life.__aenter__)

        def reconcile() -> None:
            portal.call(app.state.server.reconcile)
            marks["reconciled"] = time.perf_counter()

        ctl.on_deploy.append(reconcile)
        path = ws.models_dir / f"{name}.json"
        raw = json.loads(path.read_text())
        raw["model_hyperparameters"]["C"] = 7.5
        path.write_text(json.dumps(raw, indent=2))
        t0 = time.perf_counter()
        _git.commit(ws.root, [path.relative_to(ws.root)], f"tune {name}")
        timed.first = timed.last = None
        report = ctl.tick()
        body = {
            "inputs": [
                {
                    "name": "input-0",
                    "datatype": "FP64",
                    "shape": [1, FEATURES],
                    "data": [0.1] * FEATURES,
                }
            ]
        }
        resp = portal.call(lambda: http.post(f"/v2/models/{name}/infer", json=body))
        served = time.perf_counter()
        portal.call(life.__aexit__, None, None, None)
        portal.call(http.aclose)
    assert resp.status_code == 200, resp.text
    trained = report.applied[0]
    assert (trained["trained"], trained["deployed"]) == (1, 1), report.applied
    assert timed.first is not None
    assert timed.last is not None
    return {
        "models": n,
        "setup_seconds": round(setup, 1),
        "first_pass_seconds": round(first_s, 3),
        "idle_pass_seconds": round(idle_s, 3),
        "commit_to_served_seconds": round(served - t0, 3),
        "detection_seconds": round(timed.first - t0, 3),
        "training_seconds": round(timed.last - timed.first, 3),
        "deployment_seconds": round(served - timed.last, 3),
        "of_which_reconcile_to_answer": round(served - marks["reconciled"], 3),
        "served_version": resp.json()["model_version"],
    }


def _only_deploy(root: Path, name: str) -> None:
    """Seeded versions have no artifact: only the model under test may auto-deploy."""
    from modelworks import _git

    for path in sorted((root / "models").glob("*.json")):
        if path.stem != name:
            raw = json.loads(path.read_text())
            raw["deploy"] = {"auto_deploy": False}
            path.write_text(json.dumps(raw, indent=2))
    _git.commit(root, ["models"], "benchmark: only the model under test auto-deploys")


def _unseed(store: Any, name: str) -> None:
    from sqlalchemy import delete, select

    from modelworks.registry.models import Model, ModelVersion

    with store.session() as s:
        mid = s.scalar(select(Model.id).where(Model.name == name))
        s.execute(delete(ModelVersion).where(ModelVersion.model_id == mid))


def memory(n: int, workdir: Path) -> dict[str, Any]:
    """Resident memory of a controller process that has done two passes over n specs."""
    root = workdir / "memory"
    t = time.perf_counter()
    build(root, n)
    seed_registry(root)
    setup = time.perf_counter() - t
    out = subprocess.run(
        [sys.executable, __file__, "_memory_child", str(root)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {"models": n, "setup_seconds": round(setup, 1), **json.loads(out)}


def _memory_child(root: str) -> None:
    from modelworks.controller import Controller
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

    ws = Workspace.load(root)
    before = _status_kib("VmRSS")
    ctl = Controller(ws, Store(ws.registry_url), workers=1)
    times = []
    for _ in range(2):
        t = time.perf_counter()
        r = ctl.tick()
        times.append(round(time.perf_counter() - t, 3))
        assert not r.errors, r.errors
    print(
        json.dumps(
            {
                "rss_mib_at_import": round(before / 1024, 1),
                "rss_mib": round(_status_kib("VmRSS") / 1024, 1),
                "peak_rss_mib": round(_status_kib("VmHWM") / 1024, 1),
                "first_pass_seconds": times[0],
                "idle_pass_seconds": times[1],
            }
        )
    )


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def monitor_pass(n: int, requests: int, workdir: Path) -> dict[str, Any]:
    """One monitoring pass over n served models with `requests` logged rows each."""
    from modelworks import _git
    from modelworks.gitops.deploy import DeployConfig, write_configs
    from modelworks.monitor.predlog import PredictionLog
    from modelworks.monitor.profile import build_profile
    from modelworks.monitor.run import ProfileCache, monitor, predictions_root
    from modelworks.registry.models import Model
    from modelworks.registry.store import Store
    from modelworks.testing import make_workspace

    t = time.perf_counter()
    ws = make_workspace(workdir / "monitor")
    store = Store(ws.registry_url)
    rng = np.random.default_rng(0)
    names = [model_name(i) for i in range(n)]
    configs, cache = [], ProfileCache(ws)
    cache.folder.mkdir(parents=True, exist_ok=True)
    with store.session() as s:
        s.add_all(Model(name=m) for m in names)
    with PredictionLog(predictions_root(ws, "test"), flush_rows=requests) as plog:
        for i, m in enumerate(names):
            digest = f"sha256:{i:064x}"
            configs.append(
                DeployConfig(
                    name=m,
                    image_repository=m,
                    image_namespace="bench",
                    version="v1",
                    runtime="sklearn",
                    artifact_digest=digest,
                    artifact_uri=f"oci://{m}",
                )
            )
            profile = build_profile(rng.normal(size=(750, 4)), ["a", "b", "c", "d"])
            (cache.folder / f"{digest.replace(':', '-')}.json").write_text(json.dumps(profile))
            X = rng.normal(loc=1.0 if i % 2 else 0.0, size=(requests, 4))
            plog.append(
                m, "v1", X, (X[:, 0] > 0).astype(np.int64), feature_names=["a", "b", "c", "d"]
            )
            plog.flush()  # the writer drops rows it cannot keep up with; a benchmark wants them all
    paths = write_configs(ws.deploy_repo, "test", configs)
    _git.commit(ws.root, paths, f"deploy {n} models")
    setup = time.perf_counter() - t
    t = time.perf_counter()
    results = monitor(ws, store, "test", window=requests)
    seconds = time.perf_counter() - t
    errors = [r.error for r in results if r.error]
    assert not errors, errors[:3]
    assert {r.samples for r in results} == {requests}
    return {
        "models": n,
        "requests_per_model": requests,
        "setup_seconds": round(setup, 1),
        "pass_seconds": round(seconds, 3),
        "ms_per_model": round(1000 * seconds / n, 2),
        "rows_per_second": round(n * requests / seconds),
        "drifted": sum(r.drifted for r in results),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("what", choices=["latency", "memory", "monitor", "all", "_memory_child"])
    ap.add_argument("root", nargs="?")
    ap.add_argument("--models", type=int)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    args = ap.parse_args()
    if args.what == "_memory_child":
        _memory_child(args.root)
        return
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mw-bench-controller-") as tmp:
        work = Path(tmp)
        if args.what in ("latency", "all"):
            out["latency"] = latency(args.models or 1000, work)
        if args.what in ("memory", "all"):
            out["memory"] = memory(args.models or 9000, work)
        if args.what in ("monitor", "all"):
            out["monitor"] = monitor_pass(args.models or 1000, args.requests, work)
    text = json.dumps(out, indent=2)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
