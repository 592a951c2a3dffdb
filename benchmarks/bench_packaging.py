"""The per-model packaging cost: the line's worker job against a plain fit + skops-save loop.

    python benchmarks/bench_packaging.py            # --models 200 --repeats 3 --json out.json

N tiny models (1,000 rows x 10 features, LogisticRegression, the fleet benchmark's pipeline)
run through `runs.worker.execute` one after another in a fresh process (warmed like a pool
worker: `runs.pool.warm`), then the batch's durable sync (`oci.sync_store`, what the apply
calls before its registry commit). The baseline, in another fresh process: load, fit,
evaluate and skops-save the same models (`baselines.fit_one`). Each side runs --repeats
times, alternating; the table shows the median per-model milliseconds of each stage of the
job (timed by wrapping the functions the worker calls; "other" is the rest: the temp
folder, logging, redaction) and the ratio of the medians, with the spread (min-max).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import fleet

# (module, attribute, stage label): the functions the worker calls, wrapped when present.
# None of them calls another one in the list, so the stages do not overlap.
STAGES = [
    ("modelworks.runs.worker", "run_steps", "train (prepare, fit, evaluate)"),
    ("modelworks.runs.worker", "save_model", "model file (skops)"),
    ("modelworks.runs.worker", "model_files", "model file (skops)"),
    ("modelworks.monitor.profile", "build_profile", "profile"),
    ("modelworks.runs.worker", "write_json", "json files"),
    ("modelworks.runs.worker", "json_bytes", "json files"),
    ("modelworks.runs.worker", "sbom_bytes", "sbom"),
    ("modelworks.runs.worker", "base_of", "base layer lookup"),
    ("modelworks.artifacts.scan", "scan_dir", "scan"),
    ("modelworks.artifacts.scan", "scan_files", "scan"),
    ("modelworks.artifacts.sign", "sign_dir", "sign"),
    ("modelworks.artifacts.sign", "sign_files", "sign"),
    ("modelworks.artifacts.oci", "OCIStore.write_image", "oci image"),
    ("modelworks.artifacts.oci", "OCIStore.write_image_files", "oci image"),
]
SYNC = "batch durable sync"


def _wrap(totals: dict[str, float], label: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - t

    return timed


def _instrument(totals: dict[str, float]) -> None:
    for module_name, attr, label in STAGES:
        module = importlib.import_module(module_name)
        owner: Any = module
        name = attr
        if "." in attr:
            cls, name = attr.split(".")
            owner = getattr(module, cls)
        if hasattr(owner, name):
            setattr(owner, name, _wrap(totals, label, getattr(owner, name)))


def setup(root: Path, n: int) -> list[dict[str, Any]]:
    """A pipeline folder, a few datasets, a signing key and the n jobs apply would hand out."""
    from modelworks.artifacts.baselayer import effective_setting
    from modelworks.artifacts.sign import generate_keypair
    from modelworks.spec import Gates

    pipe = root / "pipeline"
    pipe.mkdir(parents=True)
    (pipe / "pipeline.py").write_text(fleet.PIPELINE.format(name="clf-a", max_iter=200))
    datasets = fleet.datasets_for(n)
    for d in range(datasets):
        fleet.write_csv(root / fleet.dataset_path(d), seed=d)
    generate_keypair(root / "keys" / "signing.pem", root / "keys" / "signing.pub")
    base = effective_setting("auto")
    jobs = []
    for i in range(n):
        name = fleet.model_name(i)
        data = root / fleet.dataset_path(fleet.dataset_of(i, datasets))
        jobs.append(
            {
                "run_id": i + 1,
                "attempt": 1,
                "model": name,
                "repository": name,
                "version": "v1",
                "fingerprint": f"{i:064x}",
                "runtime": "sklearn",
                "tenant": "default",
                "hyperparameters": {"C": round(0.5 + (i % 17) / 8, 4)},
                "gates": Gates().model_dump(),
                "baseline": None,
                "pipeline": {
                    "name": "clf-a",
                    "version": "v1",
                    "hash": "0" * 64,
                    "source": str(pipe),
                },
                "data": {
                    "kind": "dvc",
                    "hash": f"{fleet.dataset_of(i, datasets):032x}",
                    "dataset": str(data),
                    "files": [str(data)],
                    "names": ["data.csv"],
                },
                "oci_dir": "",  # set per repeat
                "base_image": base,
                "work_dir": "",
                "log_path": "",
                "signing_key": str(root / "keys" / "signing.pem"),
                "scan_threshold": "medium",
                "scan_limits": {},
                "spec_commit": None,
                "dirty": [],
                "spec_path": f"models/{name}.json",
                "secrets_dir": None,
                "sealing_key": None,
            }
        )
    return jobs


def line_side(jobs: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """In this (fresh) process: the worker's job for every model, then the batch sync."""
    from modelworks.runs.pool import warm

    warm()
    totals: dict[str, float] = {}
    _instrument(totals)
    from modelworks.artifacts import oci
    from modelworks.runs.worker import execute

    (out / "work").mkdir(parents=True)
    for job in jobs:
        job.update(
            oci_dir=str(out / "oci"),
            work_dir=str(out / "work"),
            log_path=str(out / "logs" / f"{job['run_id']}.log"),
            durable=False,
        )
    started = time.perf_counter()
    for job in jobs:
        r = execute(job)
        if r.get("status") != "succeeded":
            raise SystemExit(f"{job['model']}: {r.get('status')}: {r.get('error')}")
    sync = getattr(oci, "sync_store", None)
    if sync is not None:
        t = time.perf_counter()
        sync(out / "oci")
        totals[SYNC] = time.perf_counter() - t
    total = time.perf_counter() - started
    return {"total": total, "stages": totals}


def loop_side(jobs: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """In this (fresh) process: the plain loop (load, fit, evaluate, skops-save)."""
    import baselines

    baselines._single_thread()
    work = [
        (j["model"], j["data"]["files"][0], float(j["hyperparameters"]["C"]), str(out))
        for j in jobs
    ]
    started = time.perf_counter()
    for t in work:
        baselines.fit_one(t)
    return {"total": time.perf_counter() - started, "stages": {}}


def _child(side: str, root: Path, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--side", side, "--root", str(root), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{side} side failed:\n{done.stderr[-3000:]}{done.stdout[-1000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--side", choices=("line", "loop"), help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        jobs = json.loads((args.root / "jobs.json").read_text())
        fn = line_side if args.side == "line" else loop_side
        print(json.dumps(fn(jobs, args.out)))
        return
    with tempfile.TemporaryDirectory(prefix="mw-pack-") as tmp:
        root = Path(tmp)
        jobs = setup(root, args.models)
        (root / "jobs.json").write_text(json.dumps(jobs))
        runs: dict[str, list[dict[str, Any]]] = {"line": [], "loop": []}
        for k in range(args.repeats):
            for side in ("loop", "line"):
                runs[side].append(_child(side, root, root / f"{side}-{k}"))
    report(runs, args.models, args.json)


def report(runs: dict[str, list[dict[str, Any]]], n: int, out: Path | None) -> None:
    def ms(values: list[float]) -> str:
        per = [v / n * 1000 for v in values]
        return f"{statistics.median(per):7.2f} ms  ({min(per):.2f}-{max(per):.2f})"

    line = [r["total"] for r in runs["line"]]
    loop = [r["total"] for r in runs["loop"]]
    labels = sorted({k for r in runs["line"] for k in r["stages"]}, key=_order)
    print(f"per model, {n} models, median of {len(line)} fresh processes each (min-max):")
    print(f"  plain loop (fit + skops save)   {ms(loop)}")
    print(f"  line worker job, total          {ms(line)}")
    for label in labels:
        print(f"    {label:<30}{ms([r['stages'].get(label, 0.0) for r in runs['line']])}")
    other = [r["total"] - sum(r["stages"].values()) for r in runs["line"]]
    print(f"    {'other (temp folder, logs, ...)':<30}{ms(other)}")
    ratios = [a / b for a, b in zip(line, loop, strict=True)]
    print(
        f"  ratio line / loop: {statistics.median(line) / statistics.median(loop):.2f}x "
        f"(per repeat {min(ratios):.2f}-{max(ratios):.2f}x)"
    )
    if out is not None:
        out.write_text(json.dumps({"models": n, "runs": runs}, indent=1))


def _order(label: str) -> int:
    order = [s[2] for s in STAGES] + [SYNC]
    return order.index(label) if label in order else len(order)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
