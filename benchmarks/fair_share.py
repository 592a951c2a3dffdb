"""Fair share between tenants: does a tenant that floods the queue delay another one?

    python benchmarks/fair_share.py                      # A 500 jobs, B 20, 2 workers
    python benchmarks/fair_share.py --a-jobs 100 --json out.json

Two tenants, `a` and `b` (weight 1 each), in one workspace on the tiny test pipeline: every job
is a real line job (train, evaluate, gate, profile, SBOM, scan, sign, package as an OCI
ModelCar, register) through the real queue, scheduler and local worker pool. A's runs are
queued first; B's are queued a moment later; then one `apply` drains the queue.

Three runs, each in a fresh workspace, same jobs, same process:
- alone: only B's jobs, on an idle line;
- fair:  A's jobs, then B's, with the fair-share scheduler (the default);
- fifo:  the same queue taken in arrival order across tenants (what the line did before fair
         share, and what a single shared queue does).

Reported: B's completion time (from the start of the drain to B's last result) in each run,
and the ratios fair/alone (target: within 2.5x) and fifo/alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def build(root: Path, jobs: dict[str, int], train_seconds: float) -> Any:
    """A committed workspace with tenants a and b and `jobs[t]` specs for each tenant t; the
    tiny pipeline's training takes at least `train_seconds`."""
    from modelworks import _git
    from modelworks.data.add import add
    from modelworks.testing import TINY_PIPELINE, make_workspace, write_dataset, write_pipeline

    ws = make_workspace(root, tenants={"a": {}, "b": {}})
    source = TINY_PIPELINE.replace(
        "def train(data, params):",
        f"def train(data, params):\n    import time; time.sleep({train_seconds})",
    )
    write_pipeline(ws, source=source, commit=False)
    ws.models_dir.mkdir(parents=True, exist_ok=True)
    for tenant, n in jobs.items():
        path = write_dataset(ws, f"data/{tenant}/data.csv", seed=len(tenant))
        add(ws, path, update_specs=False, commit=False)
        for i in range(n):
            spec = {
                "data_source": {"type": "dvc", "dataset": f"data/{tenant}/data.csv"},
                "model_name": f"{tenant}-{i:04d}",
                "tenant": tenant,
                "kubeflow_pipeline": "tiny",
                "kubeflow_pipeline_version": "tiny-v1",
                "runtime_name": "sklearn",
                "model_hyperparameters": {"C": round(0.5 + (i % 17) / 8, 4)},
            }
            (ws.models_dir / f"{tenant}-{i:04d}.json").write_text(json.dumps(spec))
    _git.commit(root, ["models", "pipelines", "data"], "fair-share benchmark fleet")
    return ws


def enqueue(ws: Any, store: Any, tenant: str) -> int:
    """Queue a run for each of `tenant`'s models, as the plan/enqueue step of apply does."""
    from modelworks.apply import _ensure_models  # the apply's own step, without the drain
    from modelworks.plan import plan
    from modelworks.runs import queue

    names = sorted(p.stem for p in ws.models_dir.glob(f"{tenant}-*.json"))
    p = plan(ws, store, names)
    ids = _ensure_models(ws, store, p.models)
    return queue.enqueue(store, p.changes, ids, "manual")


@contextmanager
def fifo_scheduler() -> Iterator[None]:
    """The baseline: the same scheduler (claim and pool) in arrival order across tenants."""
    from modelworks.runs.fairshare import FairShare

    FairShare.fifo = True
    try:
        yield
    finally:
        FairShare.fifo = False


def drain(ws: Any, store: Any, workers: int) -> dict[str, Any]:
    """Apply (which drains the queue); B's completion time from the drain's first job."""
    from modelworks.apply import apply
    from modelworks.runs.executor import LocalExecutor

    t: dict[str, float] = {}
    done: list[tuple[float, str]] = []

    def started(_n: int) -> None:
        t.setdefault("start", time.perf_counter())

    result = apply(
        ws,
        store,
        executor=LocalExecutor(workers),
        on_start=started,
        on_result=lambda r: done.append((time.perf_counter(), r["model"])),
    )
    if not result.ok:
        raise SystemExit(f"apply failed: {result.failed or result.errors}")
    b = [at for at, name in done if _of_b(name)]
    last = max(at for at, _ in done)
    return {
        "b_seconds": max(b) - t["start"],
        "all_seconds": last - t["start"],
        "jobs": len(done),
        "b_positions": [i for i, (_, n) in enumerate(done) if _of_b(n)],
    }


def _of_b(model: str) -> bool:
    """Is this (qualified, `b/b-0001`) model one of tenant B's?"""
    return model.rsplit("/", 1)[-1].startswith("b-")


def scenario(
    workdir: Path, name: str, a_jobs: int, b_jobs: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One run in a fresh workspace: queue A's jobs (if any), wait `gap`, queue B's, drain."""
    from modelworks.registry.store import Store

    ws = build(workdir / name, {"a": a_jobs, "b": b_jobs}, args.train_seconds)
    store = Store(ws.registry_url)
    if a_jobs:
        enqueue(ws, store, "a")
        time.sleep(args.gap)
    enqueue(ws, store, "b")
    run: Callable[[], dict[str, Any]] = lambda: drain(ws, store, args.workers)  # noqa: E731
    if name == "fifo":
        with fifo_scheduler():
            return run()
    return run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a-jobs", type=int, default=500, help="jobs tenant A queues first")
    parser.add_argument("--b-jobs", type=int, default=20, help="jobs tenant B queues after")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between A's and B's")
    parser.add_argument(
        "--train-seconds", type=float, default=0.1, help="time each job's training takes"
    )
    parser.add_argument("--only", choices=["alone", "fair", "fifo"], action="append")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    from modelworks.runs.pool import preload

    preload()  # the one-time imports every run's pool would otherwise pay for the first one
    out: dict[str, Any] = vars(args) | {"json": str(args.json)}
    with tempfile.TemporaryDirectory(prefix="mw-fair-") as tmp:
        for name in args.only or ["alone", "fair", "fifo"]:
            a = 0 if name == "alone" else args.a_jobs
            out[name] = scenario(Path(tmp), name, a, args.b_jobs, args)
            row = out[name]
            sys.stdout.write(
                f"{name:6} B done in {row['b_seconds']:7.2f}s   all {row['jobs']:4} jobs in "
                f"{row['all_seconds']:7.2f}s   B's results at positions "
                f"{row['b_positions'][0]}..{row['b_positions'][-1]}\n"
            )
    if "alone" in out:
        for name in ("fair", "fifo"):
            if name in out:
                out[f"{name}_vs_alone"] = out[name]["b_seconds"] / out["alone"]["b_seconds"]
                sys.stdout.write(f"B {name} / B alone: {out[f'{name}_vs_alone']:.2f}x\n")
        if "fair_vs_alone" in out:
            ok = out["fair_vs_alone"] <= 2.5
            sys.stdout.write(f"target fair <= 2.5x alone: {'met' if ok else 'MISSED'}\n")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
