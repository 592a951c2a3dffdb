"""The read paths at fleet scale: `mw plan`, `mw status`, `mw show` against same-run floors.

    python benchmarks/read_paths.py --models 9000 --repeat 5 [--root DIR]

A synthetic workspace of --models specs (benchmarks/fleet.py), its registry seeded with every
fingerprint. Each command runs in a fresh process (as users run it) and is compared with a
fresh process doing the least the command must do:

    mw plan --json (unchanged)        python that json.loads every spec file
    mw plan --json (100 updates)      the same floor; dataset 0 (used by 100 models) changes
                                      before each repeat, so 100 specs are new every time
    mw status --json                  python + sqlite3: the same latest-version query
    mw show MODEL --json              python + sqlite3: the model's versions and deployments

Peak RSS is the command's own ru_maxrss from wait4. Reported: median and spread.
"""

from __future__ import annotations

import argparse
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

WRAPPER = """
import os, subprocess, sys, time
t = time.perf_counter()
p = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(p.pid, 0)
seconds = time.perf_counter() - t
with open(sys.argv[1], "w") as fh:
    fh.write(f"{usage.ru_maxrss} {seconds} {os.waitstatus_to_exitcode(status)}")
"""

JSON_FLOOR = """
import json, os, sys
for d, _, files in os.walk(sys.argv[1]):
    for f in sorted(files):
        if not f.endswith(".json"):
            continue
        with open(os.path.join(d, f)) as fh:
            json.load(fh)
"""

STATUS_FLOOR = """
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute(
    "SELECT m.tenant, m.name, m.pipeline, v.version, v.status, v.metrics FROM models m "
    "LEFT JOIN model_versions v ON v.id = (SELECT max(id) FROM model_versions "
    "WHERE model_id = m.id) ORDER BY m.name").fetchall()
sys.stdout.write(json.dumps([[*r[:5], json.loads(r[5] or "{}")] for r in rows]))
"""

SHOW_FLOOR = """
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
m = db.execute("SELECT id, tenant, name, labels FROM models WHERE name = ?", (sys.argv[2],))
m = m.fetchone()
vs = db.execute("SELECT * FROM model_versions WHERE model_id = ? ORDER BY id DESC", (m[0],))
ds = db.execute("SELECT * FROM deployments WHERE model_id = ? ORDER BY id DESC", (m[0],))
vs, ds = vs.fetchall(), ds.fetchall()
sys.stdout.write(json.dumps([m, vs, ds], default=str))
"""


def measure(cmd: list[str], cwd: Path | None = None) -> dict[str, float]:
    """Run `cmd` in a fresh process: wall seconds and peak RSS (MiB) of the command itself."""
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats"
        subprocess.run([sys.executable, "-c", WRAPPER, str(stats), *cmd], cwd=cwd, check=True)
        maxrss, seconds, rc = stats.read_text().split()
    if int(rc) not in (0, 2):
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}")
    return {"seconds": float(seconds), "rss_mib": int(maxrss) / 1024}


def summary(samples: list[dict[str, float]]) -> dict[str, float]:
    secs = [s["seconds"] for s in samples]
    return {
        "median": statistics.median(secs),
        "min": min(secs),
        "max": max(secs),
        "rss_mib": max(s["rss_mib"] for s in samples),
    }


def change_dataset(root: Path, k: int) -> None:
    """Rewrite dataset 0 (100 models) and `mw data add` it: 100 specs bumped and committed."""
    path = root / fleet.dataset_path(0)
    fleet.write_csv(path, seed=10_000 + k)
    cmd = [sys.executable, "-m", "modelworks", "data", "add", str(path), "-C", str(root)]
    subprocess.run(cmd, check=True, capture_output=True)


def bench(root: Path, repeat: int) -> dict[str, Any]:
    mw = [sys.executable, "-m", "modelworks"]
    db = str(root / ".mw" / "registry.db")
    models = str(root / "models")
    measure([*mw, "plan", "--json", "-C", str(root)])  # warm the OS cache and the spec cache
    py = [sys.executable, "-c"]
    pairs = {
        "plan (unchanged)": ([*mw, "plan", "--json", "-C", str(root)], [*py, JSON_FLOOR, models]),
        "status": ([*mw, "status", "--json", "-C", str(root)], [*py, STATUS_FLOOR, db]),
        "show": (
            [*mw, "show", fleet.model_name(7), "--json", "-C", str(root)],
            [*py, SHOW_FLOOR, db, fleet.model_name(7)],
        ),
    }
    out: dict[str, Any] = {}
    for name, (cmd, floor) in pairs.items():
        runs, floors = [], []
        for _ in range(repeat):
            runs.append(measure(cmd))
            floors.append(measure(floor))
        out[name] = {"mw": summary(runs), "floor": summary(floors)}
    runs, floors = [], []
    for k in range(repeat):
        change_dataset(root, k)
        runs.append(measure([*mw, "plan", "--json", "-C", str(root)]))
        floors.append(measure([*py, JSON_FLOOR, models]))
    out["plan (100 updates)"] = {"mw": summary(runs), "floor": summary(floors)}
    for r in out.values():
        r["ratio"] = r["mw"]["median"] / r["floor"]["median"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=9000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--root", type=Path, help="Reuse (or build) the fleet here.")
    args = ap.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="mw-read-")) / "fleet"
    if not (root / "modelworks.yaml").exists():
        started = time.perf_counter()
        fleet.build(root, args.models)
        fleet.seed_registry(root)
        print(f"built and seeded {args.models} models in {time.perf_counter() - started:.0f} s")
    results = bench(root, args.repeat)
    print(f"{'command':<20} {'mw s (min-max)':>22} {'floor s':>8} {'ratio':>6} {'RSS MiB':>8}")
    for name, r in results.items():
        m, f = r["mw"], r["floor"]
        spread = f"{m['median']:.3f} ({m['min']:.2f}-{m['max']:.2f})"
        ratio, rss = r["ratio"], m["rss_mib"]
        print(f"{name:<20} {spread:>22} {f['median']:>8.3f} {ratio:>5.1f}x {rss:>8.0f}")
    print(json.dumps(results))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
