"""Benchmark the supply-chain steps: scanning and signing cost per model vs training time.

    python benchmarks/bench_supply_chain.py [--workspace DIR | --keep DIR] [--workers 2]
        [--repeat 3] [--json out.json]

Builds the `mw demo` fleet (62 models: classifiers in sklearn and onnx, forecasters,
anomaly detectors) and applies it with the local executor, unless --workspace names an
already-applied workspace (`--keep DIR` builds it in DIR and leaves it there, so later
runs can measure the same artifacts with `--workspace DIR/demo`). Then, for every
registered version, it extracts the ModelCar, removes model.sig (the line scans and signs
the folder before the signature exists) and times, in this process:

- scan   ``scan_dir(folder, threshold)``        what the worker runs before packaging
- sign   ``sign_dir(folder, private_key)``      what the worker runs before packaging
- verify ``verify_dir(folder, public_key)``     what the server and `mw verify` run

each the best of --repeat runs, after one warm-up (imports). The baseline is the run's
``train_seconds`` from the registry (the train step alone), and, as a second view, the
run's whole ``duration`` (prepare, train, evaluate, save, SBOM, scan, sign, package).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any


def build_demo(root: Path, workers: int) -> Path:
    """`mw init` + the demo fleet + one apply; return the workspace root."""
    from modelworks.apply import apply
    from modelworks.init import init, populate
    from modelworks.registry.store import Store
    from modelworks.runs.executor import make_executor

    ws = init(root, name="bench-supply-chain")
    count = populate(ws, "demo")
    started = time.perf_counter()
    result = apply(
        ws, Store(ws.registry_url), executor=make_executor("local", workers), actor="bench"
    )
    summary = result.to_dict()["summary"]
    print(
        f"applied {count} demo models in {time.perf_counter() - started:.1f}s: {summary}",
        file=sys.stderr,
    )
    return ws.root


def versions(ws: Any) -> list[dict[str, Any]]:
    """Every registered version with its runtime, pipeline, digest and run timings."""
    from sqlalchemy import select

    from modelworks.registry.models import Model, ModelVersion, Run
    from modelworks.registry.store import Store

    store = Store(ws.registry_url)
    with store.session() as s:
        rows = s.execute(
            select(
                Model.name,
                Model.pipeline,
                ModelVersion.version,
                ModelVersion.artifact_digest,
                Run.train_seconds,
                Run.duration,
            )
            .join(ModelVersion, ModelVersion.model_id == Model.id)
            .join(Run, Run.id == ModelVersion.run_id)
            .where(ModelVersion.status == "registered")
            .order_by(Model.name)
        ).all()
    store.close()
    return [
        {"name": n, "pipeline": p, "version": v, "digest": d, "train_s": t, "run_s": r}
        for n, p, v, d, t, r in rows
    ]


def best_of(repeat: int, fn: Callable[[], Any]) -> float:
    """The fastest of `repeat` timed calls (the machine is shared; the minimum is the cost)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(ws: Any, rows: list[dict[str, Any]], repeat: int) -> list[dict[str, Any]]:
    """Time scan, sign and verify over each version's extracted model folder."""
    from modelworks.artifacts.oci import OCIStore
    from modelworks.artifacts.scan import scan_dir
    from modelworks.artifacts.sign import SIGNATURE_FILE, sign_dir, verify_dir
    from modelworks.security.keys import signing_keys

    private, public = signing_keys(ws)
    threshold = ws.settings.scan.severity
    oci = OCIStore(ws.oci_dir)
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-supply-") as tmp:
        for i, row in enumerate(rows):
            folder = oci.extract(row["digest"], Path(tmp) / f"m{i}")
            (folder / SIGNATURE_FILE).unlink()
            files = [p for p in folder.rglob("*") if p.is_file()]
            if i == 0:  # warm-up: imports and caches, not counted
                scan_dir(folder, threshold=threshold)
                sign_dir(folder, private)
                verify_dir(folder, public)
                (folder / SIGNATURE_FILE).unlink()
            scan_s = best_of(repeat, partial(_scan_safe, folder, threshold))
            sign_s = best_of(repeat, partial(sign_dir, folder, private))
            verify_s = best_of(repeat, partial(verify_dir, folder, public))
            out.append(
                row
                | {
                    "runtime": _runtime(folder),
                    "files": len(files),
                    "bytes": sum(p.stat().st_size for p in files),
                    "scan_s": scan_s,
                    "sign_s": sign_s,
                    "verify_s": verify_s,
                    "cost_over_train": (scan_s + sign_s) / row["train_s"]
                    if row["train_s"]
                    else None,
                    "cost_over_run": (scan_s + sign_s) / row["run_s"] if row["run_s"] else None,
                }
            )
            shutil.rmtree(folder)
    return out


def _scan_safe(folder: Path, threshold: str) -> None:
    from modelworks.artifacts.scan import scan_dir

    result = scan_dir(folder, threshold=threshold)
    if not result.safe:
        raise SystemExit(f"a registered version does not scan safe: {result.to_dict()}")


def _runtime(folder: Path) -> str:
    try:
        return str(json.loads((folder / "metadata.json").read_text()).get("runtime", "?"))
    except (OSError, ValueError):
        return "?"


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals, per-model ratio quantiles, and the same per (pipeline, runtime) group."""
    groups: dict[str, list[dict[str, Any]]] = {"all": rows}
    for r in rows:
        groups.setdefault(f"{r['pipeline']} / {r['runtime']}", []).append(r)
    return {name: _stats(group) for name, group in groups.items()}


def _stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = sorted(r["cost_over_train"] for r in rows if r["cost_over_train"] is not None)
    train = sum(r["train_s"] or 0 for r in rows)
    run = sum(r["run_s"] or 0 for r in rows)
    scan, sign, verify = (sum(r[k] for r in rows) for k in ("scan_s", "sign_s", "verify_s"))
    return {
        "models": len(rows),
        "train_s": round(train, 4),
        "run_s": round(run, 3),
        "scan_s": round(scan, 4),
        "sign_s": round(sign, 4),
        "verify_s": round(verify, 4),
        "scan_ms_median": round(1000 * statistics.median(r["scan_s"] for r in rows), 2),
        "sign_ms_median": round(1000 * statistics.median(r["sign_s"] for r in rows), 2),
        "verify_ms_median": round(1000 * statistics.median(r["verify_s"] for r in rows), 2),
        "fleet_cost_over_train": round((scan + sign) / train, 3) if train else None,
        "fleet_cost_over_run": round((scan + sign) / run, 3) if run else None,
        "per_model_cost_over_train": {
            "median": round(statistics.median(ratios), 3) if ratios else None,
            "p90": round(ratios[int(0.9 * (len(ratios) - 1))], 3) if ratios else None,
            "max": round(ratios[-1], 3) if ratios else None,
        },
    }


def print_report(summary: dict[str, Any]) -> None:
    header = (
        f"{'group':<46} {'n':>3} {'train s':>8} {'scan ms':>8} {'sign ms':>8} "
        f"{'verify ms':>9} {'(scan+sign)/train':>18} {'/run':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, s in summary.items():
        ratio = s["per_model_cost_over_train"]
        print(
            f"{name:<46} {s['models']:>3} {s['train_s']:>8.3f} {s['scan_ms_median']:>8.1f} "
            f"{s['sign_ms_median']:>8.1f} {s['verify_ms_median']:>9.1f} "
            f"{s['fleet_cost_over_train']:>8.2f} (med {ratio['median']:.2f}) "
            f"{s['fleet_cost_over_run']:>6.3f}"
        )
    print(
        "\nscan/sign/verify ms are per-model medians; (scan+sign)/train is the fleet total ratio"
        " (per-model median in brackets); /run divides by the whole run duration."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, help="an already-applied workspace to measure")
    parser.add_argument("--keep", type=Path, help="build the demo in this folder and keep it")
    parser.add_argument(
        "--workers", type=int, default=2, help="training workers for the demo apply"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (best is kept)")
    parser.add_argument("--json", type=Path, help="also write the full results here")
    args = parser.parse_args(argv)

    from modelworks.workspace import Workspace

    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        where = args.keep or Path(tmp)
        root = args.workspace or build_demo(where / "demo", args.workers)
        ws = Workspace.load(root)
        rows = measure(ws, versions(ws), args.repeat)
    if not rows:
        print("no registered versions to measure", file=sys.stderr)
        return 1
    summary = summarize(rows)
    print_report(summary)
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "models": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
