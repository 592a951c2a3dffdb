"""The fleet benchmark: plan and apply at fleet scale, as ratios against same-run baselines.

    python benchmarks/run.py --models 9000 --apply-models 500 --tools-models 200

Plan: a synthetic workspace of --models specs (a few hundred datasets, three pipelines), its
registry seeded with every fingerprint; `mw plan --json` in a subprocess (as users run it)
and plan() in-process, unchanged (cold, then warm), after one spec changed, and after one
dataset used by 100 models changed through `mw data add` — against the floor of reading and
json-parsing every spec file plus `git status`.
Apply: `mw apply` of --apply-models tiny models (1,000 rows x 10 features, LogisticRegression)
against a plain loop that fits, evaluates and saves the same models with skops, in one process
and over a multiprocessing Pool of all cores.
Tools: MLflow (SQLite backend, model registry) and DVC (foreach stage, `dvc repro`, `dvc status`)
on --tools-models of the same models, when installed (the `bench` extra).
Every ratio is taken both ways: fresh process against fresh process (`mw plan`/`mw apply`
against the floor or the Pool loop run as a new `python -c`, imports included on both sides) and
warm against warm (plan()/apply() called in this process against the baseline in this process).
Peak RSS is the child's ru_maxrss from wait4 (the largest single process of its tree).
Results: benchmarks/results/fleet-<time>.json and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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

# A forked child inherits its parent's peak RSS (Linux keeps the high-water mark across
# fork + exec), and this process holds a 9,000-spec plan. So each command runs under a tiny
# fresh interpreter that starts it and reports the command's own wait4 rusage and time.
WRAPPER = """
import os, subprocess, sys, time
t = time.perf_counter()
p = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(p.pid, 0)
seconds = time.perf_counter() - t
with open(sys.argv[1], "w") as fh:
    fh.write(f"{usage.ru_maxrss} {seconds}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(cmd: list[str], cwd: Path | None = None) -> dict[str, Any]:
    """Run a command; its wall seconds, peak RSS (MiB), exit code and stdout."""
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats"
        proc = subprocess.run(
            [sys.executable, "-c", WRAPPER, str(stats), *cmd],
            cwd=cwd,
            capture_output=True,
            text=True,
        )
        if proc.returncode not in (0, 2):
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
        maxrss, seconds = stats.read_text().split()
    return {
        "seconds": float(seconds),
        "rss_mib": int(maxrss) / 1024,
        "rc": proc.returncode,
        "stdout": proc.stdout,
    }


# The floor as a fresh process: interpreter start and imports included, like `mw plan`.
FLOOR_SCRIPT = """
import json, subprocess, sys
from pathlib import Path
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    with path.open() as fh:
        json.load(fh)
subprocess.run(["git", "status", "--porcelain"], cwd=sys.argv[2], check=True, capture_output=True)
"""

# The parallel loop as a fresh process: imports (numpy, scikit-learn, skops) and Pool start
# included, like `mw apply`.
LOOP_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import baselines
work = [tuple(t) for t in json.load(open(sys.argv[2]))]
baselines.parallel_loop(work, int(sys.argv[3]))
"""


def fresh_floor(root: Path) -> dict[str, Any]:
    """The plan floor in a fresh `python -c` process (seconds, RSS)."""
    r = measure([sys.executable, "-c", FLOOR_SCRIPT, str(root / "models"), str(root)])
    r.pop("stdout")
    return r


def fresh_loop(work: list[tuple[str, str, float, str]], cores: int, scratch: Path) -> float:
    """Seconds of the Pool loop in a fresh `python -c` process (imports included)."""
    spec = scratch / "loop-work.json"
    spec.write_text(json.dumps(work))
    here = str(Path(__file__).parent)
    return float(
        measure([sys.executable, "-c", LOOP_SCRIPT, here, str(spec), str(cores)])["seconds"]
    )


def inproc_apply(root: Path) -> dict[str, Any]:
    """apply() in this process (modelworks and scikit-learn imports already warm)."""
    from modelworks.apply import apply
    from modelworks.registry.store import Store
    from modelworks.runs.executor import for_workspace
    from modelworks.workspace import Workspace

    started = time.perf_counter()
    ws = Workspace.load(root)
    store = Store(ws.registry_url)
    result = apply(ws, store, executor=for_workspace(ws, None))
    store.close()
    return {"seconds": time.perf_counter() - started, "summary": result.to_dict()["summary"]}


def cli_plan(root: Path) -> dict[str, Any]:
    """`mw plan --json` in a subprocess: seconds, RSS and the summary it printed."""
    r = measure(["mw", "plan", "--json", "-C", str(root)])
    summary = json.loads(r.pop("stdout"))["summary"]
    return {**r, "summary": summary}


def inproc_plan(root: Path) -> dict[str, Any]:
    """plan() in this process (imports already warm): seconds and the summary."""
    from modelworks.plan import plan
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

    started = time.perf_counter()
    ws = Workspace.load(root)
    store = Store(ws.registry_url)
    summary = plan(ws, store).summary
    store.close()
    return {"seconds": time.perf_counter() - started, "summary": summary}


def plan_suite(n: int, scratch: Path) -> dict[str, Any]:
    """Build a fleet of n specs, seed its registry, and time plan in its three situations."""
    root = scratch / f"plan-{n}"
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    built = fleet.build(root, n)
    built["build_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    built["seeded"] = fleet.seed_registry(root)
    built["seed_seconds"] = time.perf_counter() - t
    baselines.parse_floor(root / "models")  # warm the page cache like a second plan would
    floor = {
        "parse_seconds": baselines.parse_floor(root / "models"),
        "git_status_seconds": min(baselines.git_status(root), baselines.git_status(root)),
    }
    floor["seconds"] = floor["parse_seconds"] + floor["git_status_seconds"]
    fresh = [fresh_floor(root) for _ in range(3)]
    floor["fresh_seconds"] = sorted(f["seconds"] for f in fresh)[1]  # median of 3
    out: dict[str, Any] = {"fleet": built, "floor": floor}
    out["unchanged_cold"] = cli_plan(root)
    out["unchanged_warm"] = cli_plan(root)
    out["unchanged_inproc"] = inproc_plan(root)
    out["unchanged_inproc_warm"] = inproc_plan(root)

    spec_path = root / "models" / f"{fleet.model_name(n - 1)}.json"
    original = spec_path.read_text()
    raw = json.loads(original)
    raw["model_hyperparameters"]["C"] = 9.5
    spec_path.write_text(json.dumps(raw, indent=2))
    fleet.git(root, "commit", "-q", "-am", "one spec changed")  # plan trains committed specs
    out["one_spec_changed"] = cli_plan(root)
    out["one_spec_changed_inproc"] = inproc_plan(root)
    spec_path.write_text(original)
    fleet.git(root, "commit", "-q", "-am", "one spec changed back")

    fleet.write_csv(root / fleet.dataset_path(0), seed=10_000)
    out["data_add"] = measure(
        ["mw", "data", "add", fleet.dataset_path(0), "-C", str(root)], cwd=root
    )
    out["data_add"].pop("stdout")
    out["dataset_changed"] = cli_plan(root)
    out["dataset_changed_inproc"] = inproc_plan(root)
    out["ratios"] = plan_ratios(out)
    return out


def plan_ratios(p: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each plan against the floor both ways: fresh process against fresh process (the CLI
    against `python -c` of the floor, imports included on both sides), warm against warm
    (plan() in this process against the floor in this process)."""
    fresh, warm = p["floor"]["fresh_seconds"], p["floor"]["seconds"]
    return {
        "fresh": {
            k: round(p[k]["seconds"] / fresh, 2)
            for k in ("unchanged_cold", "unchanged_warm", "one_spec_changed", "dataset_changed")
        },
        "warm": {
            k: round(p[k]["seconds"] / warm, 2)
            for k in ("unchanged_inproc_warm", "one_spec_changed_inproc", "dataset_changed_inproc")
        },
    }


def apply_suite(n: int, scratch: Path, tools_n: int, tools: bool) -> dict[str, Any]:
    """`mw apply` of n tiny models against plain loops (and MLflow/DVC on tools_n of them)."""
    root = scratch / f"apply-{n}"
    shutil.rmtree(root, ignore_errors=True)
    built = fleet.build(root, n)
    cores = os.cpu_count() or 1
    work = baselines.tasks(root, n, int(built["datasets"]), scratch / "loop-out")
    shutil.rmtree(scratch / "loop-out", ignore_errors=True)
    out: dict[str, Any] = {"fleet": built, "cores": cores}
    out["loop_seconds"] = baselines.loop(work)
    shutil.rmtree(scratch / "loop-out", ignore_errors=True)
    out["parallel_loop_seconds"] = baselines.parallel_loop(work, cores)
    shutil.rmtree(scratch / "loop-out", ignore_errors=True)
    out["fresh_parallel_loop_seconds"] = fresh_loop(work, cores, scratch)
    shutil.rmtree(scratch / "loop-out", ignore_errors=True)
    r = measure(["mw", "apply", "--json", "-C", str(root)])
    report = json.loads(r.pop("stdout"))
    out["apply"] = {**r, "summary": report["summary"]}
    warm_root = scratch / f"apply-{n}-warm"  # a second, identical fleet for apply() in-process
    shutil.rmtree(warm_root, ignore_errors=True)
    fleet.build(warm_root, n)
    out["apply_inproc"] = inproc_apply(warm_root)
    out["ratios"] = {
        "fresh": {"apply": round(r["seconds"] / out["fresh_parallel_loop_seconds"], 2)},
        "warm": {"apply": round(out["apply_inproc"]["seconds"] / out["parallel_loop_seconds"], 2)},
    }
    if tools:
        sub = work[:tools_n]
        out["tools_models"] = len(sub)
        t = time.perf_counter()
        out["tools_parallel_loop_seconds"] = baselines.parallel_loop(sub, cores)
        out["tools_loop_seconds"] = baselines.loop(sub)
        out["tools_baseline_wall"] = time.perf_counter() - t
        out["mlflow"] = baselines.mlflow_run(sub, scratch / "mlflow")
        out["dvc"] = baselines.dvc_run(root, sub, scratch / "dvc")
        out["apply_tools_n"] = _apply_subset(scratch, tools_n)
    return out


def _apply_subset(scratch: Path, n: int) -> dict[str, Any]:
    """`mw apply` of exactly the tools' n models (a fresh fleet), for a like-for-like ratio."""
    root = scratch / f"apply-{n}-tools"
    shutil.rmtree(root, ignore_errors=True)
    fleet.build(root, n)
    r = measure(["mw", "apply", "--json", "-C", str(root)])
    report = json.loads(r.pop("stdout"))
    return {**r, "summary": report["summary"]}


def machine() -> dict[str, Any]:
    """Where the numbers come from."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(measurement, seconds, baseline, ratio, target, RSS) rows for the table and the README."""
    out = []
    p = results.get("plan")
    if p:
        warm, fresh = p["floor"]["seconds"], p["floor"]["fresh_seconds"]
        n = p["fleet"]["models"]
        for key, label, target in [
            ("unchanged_cold", f"mw plan, {n} unchanged (first)", ""),
            ("unchanged_warm", f"mw plan, {n} unchanged (again)", "< 1 s, <= 3x floor"),
            ("unchanged_inproc_warm", "plan() in-process, unchanged (warm)", ""),
            ("one_spec_changed", "mw plan, one spec changed", ""),
            ("one_spec_changed_inproc", "plan() in-process, one spec changed", ""),
            ("dataset_changed", "mw plan, one dataset (100 models) changed", ""),
            ("dataset_changed_inproc", "plan() in-process, dataset changed", ""),
        ]:
            r = p[key]
            in_cli = "rss_mib" in r  # a fresh process: against the floor's fresh process
            floor = fresh if in_cli else warm
            base = f"floor {floor:.2f}s ({'fresh' if in_cli else 'warm'})"
            rss = f"{r['rss_mib']:.0f} MiB" if in_cli else ""
            out.append(
                (label, f"{r['seconds']:.2f}", base, f"{r['seconds'] / floor:.1f}x", target, rss)
            )
        d = p["data_add"]
        out.append(
            (
                "mw data add (bumps 100 specs, commits)",
                f"{d['seconds']:.2f}",
                "",
                "",
                "",
                f"{d['rss_mib']:.0f} MiB",
            )
        )
    a = results.get("apply")
    if a:
        n, par, seq = a["fleet"]["models"], a["parallel_loop_seconds"], a["loop_seconds"]
        ap = a["apply"]
        out.append((f"plain loop, {n} models, 1 process", f"{seq:.1f}", "", "", "", ""))
        fpar = a["fresh_parallel_loop_seconds"]
        out.append((f"plain loop, {n} models, Pool({a['cores']})", f"{par:.1f}", "", "", "", ""))
        out.append(("  the same, fresh process (imports)", f"{fpar:.1f}", "", "", "", ""))
        out.append(
            (
                f"mw apply, {n} models (fresh process)",
                f"{ap['seconds']:.1f}",
                f"Pool loop {fpar:.1f}s (fresh)",
                f"{ap['seconds'] / fpar:.2f}x",
                "<= 1.3x",
                f"{ap['rss_mib']:.0f} MiB",
            )
        )
        ai = a["apply_inproc"]
        out.append(
            (
                f"apply() in-process, {n} models (warm)",
                f"{ai['seconds']:.1f}",
                f"Pool loop {par:.1f}s (warm)",
                f"{ai['seconds'] / par:.2f}x",
                "<= 1.3x",
                "",
            )
        )
        if "tools_models" in a:
            tn, tpar = a["tools_models"], a["tools_parallel_loop_seconds"]
            at = a["apply_tools_n"]
            out.append(
                (
                    f"mw apply, {tn} models",
                    f"{at['seconds']:.1f}",
                    f"parallel loop {tpar:.1f}s",
                    f"{at['seconds'] / tpar:.2f}x",
                    "",
                    f"{at['rss_mib']:.0f} MiB",
                )
            )
            m = a["mlflow"]
            if "seconds" in m:
                out.append(
                    (
                        f"MLflow, {tn} models (1 process)",
                        f"{m['seconds']:.1f}",
                        f"loop {a['tools_loop_seconds']:.1f}s",
                        f"{m['seconds'] / a['tools_loop_seconds']:.1f}x",
                        "",
                        "",
                    )
                )
            else:
                out.append(
                    (
                        f"MLflow, {tn} models",
                        "-",
                        str(m.get("skipped") or m.get("error")),
                        "",
                        "",
                        "",
                    )
                )
            d = a["dvc"]
            if "repro_seconds" in d:
                out.append(
                    (
                        f"dvc repro, {tn} models",
                        f"{d['repro_seconds']:.1f}",
                        f"loop {a['tools_loop_seconds']:.1f}s",
                        f"{d['repro_seconds'] / a['tools_loop_seconds']:.1f}x",
                        "",
                        "",
                    )
                )
                out.append(
                    (f"dvc status, {tn} unchanged", f"{d['status_seconds']:.2f}", "", "", "", "")
                )
            else:
                out.append(
                    (f"DVC, {tn} models", "-", str(d.get("skipped") or d.get("error")), "", "", "")
                )
    return out


def show(results: dict[str, Any]) -> None:
    """Print the results as a Rich table."""
    from rich.console import Console
    from rich.table import Table

    m = results["machine"]
    table = Table(
        title=f"modelworks fleet benchmark — {m['cores']} cores, {m['memory_gib']} GiB, {m['date']}"
    )
    for col in ("measurement", "seconds", "baseline", "ratio", "target", "peak RSS"):
        table.add_column(col)
    for row in rows(results):
        table.add_row(*row)
    p = results.get("plan")
    if p:
        f = p["floor"]
        table.caption = (
            f"plan floor, warm = json.load of every spec {f['parse_seconds']:.3f}s + "
            f"git status {f['git_status_seconds']:.3f}s in this process; fresh = the same in a "
            f"new `python -c` {f['fresh_seconds']:.3f}s. A fresh process (mw ...) is divided by "
            "a fresh baseline, an in-process call by the warm one."
        )
    Console(width=max(120, Console().width)).print(table)


def main(argv: list[str] | None = None) -> int:
    """Run the selected suites, save JSON, print the table."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", type=int, default=9000, help="specs in the plan fleet")
    ap.add_argument(
        "--apply-models", type=int, default=500, help="models trained by the apply suite"
    )
    ap.add_argument("--tools-models", type=int, default=200, help="models for MLflow and DVC")
    ap.add_argument("--only", choices=("plan", "apply"), help="run one suite")
    ap.add_argument("--no-tools", action="store_true", help="skip MLflow and DVC")
    ap.add_argument("--scratch", type=Path, help="where fleets are built (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args(argv)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="mw-bench-"))
    results: dict[str, Any] = {
        "machine": machine(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    try:
        if args.only in (None, "plan"):
            results["plan"] = plan_suite(args.models, scratch)
        if args.only in (None, "apply"):
            results["apply"] = apply_suite(
                args.apply_models, scratch, args.tools_models, not args.no_tools
            )
    finally:
        if not args.keep and args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    path = baselines.save_results("fleet", results)
    show(results)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
