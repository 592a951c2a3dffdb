"""Retrain one model of a big fleet: `mw apply` after one model's dataset changed.

    python benchmarks/retrain_one.py --models 900 9000 --rounds 3

For each fleet size N: a workspace of N specs (benchmarks/fleet.py) where the last model
trains on a dataset of its own; the registry is seeded with every model's fingerprint (like
run.py's plan suite) and every model is deployed to `test` (the real `deploy_auto`, one
commit of N configs). Each round writes new rows into that one dataset, runs `mw data add`
(which bumps and commits the one spec), then times `mw apply --json` as a fresh process
(wall, peak RSS), and, after another change, the same apply in a fresh process with each
stage timed (imports, plan, queue, drain, deploy). One untimed round first warms what a
workspace's first training creates once (the base layer, the signing key).
Reports the medians and spreads, and the ratio of the largest fleet to the smallest.
Target (issue 12): <= 1.0 s for `mw apply` at 9,000 models, within 1.3x of 900.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import baselines
import fleet

SOLO = "data/solo/data.csv"

# A fresh interpreter that runs the CLI's apply with each stage of modelworks.apply timed.
STAGED = r"""
import json, sys, time
t0 = time.perf_counter()
from modelworks.cli import main  # what `mw` imports first
import modelworks.apply as A
import modelworks.runs.executor  # noqa: F401
times = {"import": time.perf_counter() - t0}

def timed(mod, name, key):
    fn = getattr(mod, name)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            times[key] = times.get(key, 0.0) + time.perf_counter() - t
    setattr(mod, name, wrapper)

for name, key in [("plan", "plan"), ("_ensure_models", "ensure_models"),
                  ("_record_pipelines", "record_pipelines"), ("_drain", "drain"),
                  ("deploy_auto", "deploy")]:  # deploy_auto as apply.py imported it
    timed(A, name, key)
timed(A.queue, "requeue_interrupted", "requeue")
timed(A.queue, "enqueue", "enqueue")
t1 = time.perf_counter()
try:
    main(["apply", "--json", "-C", sys.argv[1]])
except SystemExit:
    pass
times["cli"] = time.perf_counter() - t1
times["total"] = time.perf_counter() - t0
print("STAGES " + json.dumps(times), file=sys.stderr)
"""


def build(root: Path, n: int) -> dict[str, Any]:
    """The fleet, its last model moved onto a dataset of its own, seeded and deployed."""
    from modelworks.apply import signing_key
    from modelworks.data.add import add
    from modelworks.gitops.autodeploy import deploy_auto
    from modelworks.plan import plan
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    built = fleet.build(root, n)
    ws = Workspace.load(root)
    fleet.write_csv(root / SOLO, seed=7)
    add(ws, root / SOLO, update_specs=False, commit=False)
    spec_path = ws.models_dir / f"{fleet.model_name(n - 1)}.json"
    raw = json.loads(spec_path.read_text())
    raw["data_source"]["dataset"] = SOLO
    spec_path.write_text(json.dumps(raw, indent=2))
    fleet.git(root, "add", "-A", "models", "data")
    fleet.git(root, "commit", "-q", "-m", "the last model trains on a dataset of its own")
    built["seeded"] = fleet.seed_registry(root)
    ws = Workspace.load(root)
    store = Store(ws.registry_url)
    signing_key(ws)
    deployed, _commit = deploy_auto(ws, store, plan(ws, store), "bench")
    store.close()
    built["deployed"] = len(deployed)
    built["build_seconds"] = time.perf_counter() - t
    return built


def change(root: Path, seed: int) -> None:
    """New rows in the solo dataset, versioned with `mw data add` (bumps, commits the spec)."""
    fleet.write_csv(root / SOLO, seed=seed)
    proc = subprocess.run(
        ["mw", "data", "add", SOLO, "-C", str(root)], cwd=root, capture_output=True, text=True
    )
    if proc.returncode:
        raise RuntimeError(f"mw data add failed: {proc.stderr[-2000:]}")


def cli_apply(root: Path) -> dict[str, Any]:
    """`mw apply --json` in a fresh process: wall seconds, CPU seconds of its whole process
    tree (user + sys, from wait4: steadier than wall on a shared machine), what it trained."""
    t = time.perf_counter()
    proc = subprocess.Popen(
        ["mw", "apply", "--json", "-C", str(root)], stdout=subprocess.PIPE, text=True
    )
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"mw apply exited {os.waitstatus_to_exitcode(status)}")
    report = json.loads(out)
    if report["summary"]["trained"] != 1:
        raise RuntimeError(f"expected one model trained, got {report['summary']}")
    return {
        "seconds": wall,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "rss_mib": usage.ru_maxrss / 1024,
        "summary": report["summary"],
    }


def staged_apply(root: Path) -> dict[str, float]:
    """The same apply in a fresh interpreter with each stage timed."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", STAGED, str(root)], capture_output=True, text=True, cwd=root
    )
    wall = time.perf_counter() - t
    lines = [x for x in proc.stderr.splitlines() if x.startswith("STAGES ")]
    if not lines:
        raise RuntimeError(f"staged apply failed: {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    if report["summary"]["trained"] != 1:
        raise RuntimeError(f"expected one model trained, got {report['summary']}")
    stages: dict[str, float] = json.loads(lines[-1][len("STAGES ") :])
    stages["wall"] = wall
    return stages


def suite(n: int, scratch: Path, rounds: int, seed: int, reuse: bool) -> dict[str, Any]:
    """Build a fleet of n and time `rounds` one-model retrains."""
    root = scratch / f"retrain-{n}"
    marker = root / ".mw" / "bench-built.json"
    if reuse and marker.exists():
        built = json.loads(marker.read_text())
    else:
        built = build(root, n)
        marker.write_text(json.dumps(built))
    out: dict[str, Any] = {"fleet": built, "cli": [], "staged": []}
    change(root, seed)
    cli_apply(root)  # warm-up: the workspace's first training
    for k in range(rounds):
        change(root, seed + 1 + 2 * k)
        out["cli"].append(cli_apply(root))
        change(root, seed + 2 + 2 * k)
        out["staged"].append(staged_apply(root))
    return out


def spread(values: list[float]) -> str:
    """`median (min-max)` of a list of seconds."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def show(results: dict[str, Any]) -> None:
    """A plain table: wall seconds per size, stage medians, and the ratio largest/smallest."""
    sizes = sorted(results["fleets"], key=int)
    head = f"{'models':>7} {'mw apply wall s, median (min-max)':>36} {'CPU s (tree)':>22}"
    print(f"{head} {'RSS':>5}")
    for n in sizes:
        r = results["fleets"][n]
        walls = [c["seconds"] for c in r["cli"]]
        cpus = [c["cpu_seconds"] for c in r["cli"]]
        rss = statistics.median(c["rss_mib"] for c in r["cli"])
        print(f"{n:>7} {spread(walls):>36} {spread(cpus):>22} {rss:>5.0f}")
    keys = [k for k in results["fleets"][sizes[0]]["staged"][0] if k != "wall"] + ["wall"]
    print("stages (fresh process, median seconds):")
    print(f"{'':>18}" + "".join(f"{n:>10}" for n in sizes))
    for key in keys:
        meds = [
            statistics.median(s.get(key, 0.0) for s in results["fleets"][n]["staged"])
            for n in sizes
        ]
        print(f"{key:>18}" + "".join(f"{m:>10.3f}" for m in meds))
    if len(sizes) > 1:
        lo, hi = (
            statistics.median(c["seconds"] for c in results["fleets"][n]["cli"])
            for n in (sizes[0], sizes[-1])
        )
        print(f"ratio {sizes[-1]}/{sizes[0]}: {hi / lo:.2f}x (target <= 1.3x; <= 1.0 s at 9,000)")
        clo, chi = (
            statistics.median(c["cpu_seconds"] for c in results["fleets"][n]["cli"])
            for n in (sizes[0], sizes[-1])
        )
        print(f"CPU ratio {sizes[-1]}/{sizes[0]}: {chi / clo:.2f}x")


def main(argv: list[str] | None = None) -> int:
    """Build each fleet, time its retrains, save JSON, print the table."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", type=int, nargs="+", default=[900, 9000], help="fleet sizes")
    ap.add_argument("--rounds", type=int, default=3, help="timed retrains per fleet")
    ap.add_argument("--scratch", type=Path, help="where fleets are built (default: a temp folder)")
    ap.add_argument("--reuse", action="store_true", help="keep and reuse built fleets in --scratch")
    args = ap.parse_args(argv)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="mw-retrain-"))
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "args": {k: str(v) for k, v in vars(args).items()},
        "fleets": {},
    }
    try:
        for n in args.models:
            results["fleets"][str(n)] = suite(
                n, scratch, args.rounds, seed=1000 + n + int(time.time()) % 1000, reuse=args.reuse
            )
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    path = baselines.save_results("retrain", results)
    show(results)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
