"""The scale run, by simulation: plan and registry queries at 9,000 and 90,000 specs.

    python benchmarks/scale.py --sizes 9000 90000 --versions 10 --requests 300
    python benchmarks/scale.py --postgres 127.0.0.1:5432   # the same on a scratch PostgreSQL

For each size N it builds the benchmark fleet (benchmarks/fleet.py: N specs over a few hundred
datasets, three pipelines, committed) and seeds the registry the way the 9,000 benchmark does,
from the plan's own fingerprints so "unchanged" really is unchanged, but with --versions
versions per model (the latest carries the plan's fingerprint; 9,000 x 10 = 90,000 and
90,000 x 10 = 900,000 rows), a succeeded run per version and a test deployment per model. Rows
go in with executemany in batches (not the ORM, one object per row).

Then it times, at each size: plan() in-process (warm), `mw plan --json` and `mw status --json`
in fresh processes, the control-plane API's `GET /api/v1/models/{tenant}/{name}` (one model's
versions) over random models, and `GET /api/v1/models?limit=100` pages (the first, and deep ones
reached by their keyset cursor). Each cost is reported with its growth from the smallest size
to each larger one (linear is 10x for 9,000 -> 90,000), and the floor (json.load of every
spec + `git status`) with its own growth, as the baseline. Results: benchmarks/results/scale-*.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import baselines
import fleet
from run import machine, measure

BATCH = 20_000


def _batches(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def seed(root: Path, versions: int) -> dict[str, Any]:
    """Register every planned model with `versions` versions (the latest is the plan's)."""
    from modelworks.pipelines.catalog import snapshot
    from modelworks.plan import plan
    from modelworks.registry.models import Deployment, Model, ModelVersion, PipelineVersion, Run
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

    t0 = time.perf_counter()
    ws = Workspace.load(root)
    store = Store(ws.registry_url)
    todo = [m for m in plan(ws, store).models if m.action in ("create", "update")]
    planned = time.perf_counter() - t0
    now = datetime.now(UTC)
    empty: dict[str, Any] = {}
    metrics = {"accuracy": 0.9}
    lineage = {p: {"pipeline_version": p} for p in {m.spec.pipeline for m in todo}}
    refs = {(m.pipeline.name, m.pipeline.version): m.pipeline for m in todo if m.pipeline}
    pipes = [
        {
            "name": r.name,
            "version": r.version,
            "hash": r.hash,
            "snapshot": str(snapshot(r.source, r.hash, ws.state_dir / "pipelines")),
            "created_at": now,
        }
        for r in refs.values()
    ]
    models = (
        {
            "id": i + 1,
            "name": m.name,
            "tenant": "default",
            "pipeline": m.spec.pipeline,
            "spec_path": f"models/{m.name}.json",
            "labels": empty,
            "created_at": now,
        }
        for i, m in enumerate(todo)
    )

    def generation(g: int) -> Iterator[tuple[int, Any, str, str]]:
        for i, m in enumerate(todo):  # older versions first: a model's latest has the top id
            if g == versions - 1:
                yield i, m, m.fingerprint, m.version
            else:
                fp = f"{g:02x}{i:062x}"
                yield i, m, fp, f"old{g:02d}-{i:x}"[:32]

    def runs() -> Iterator[dict[str, Any]]:
        for g in range(versions):
            for i, _m, fp, version in generation(g):
                yield {
                    "id": g * len(todo) + i + 1,
                    "model_id": i + 1,
                    "tenant": "default",
                    "fingerprint": fp,
                    "version": version,
                    "status": "succeeded",
                    "trigger": "manual",
                    "attempts": 1,
                    "duration": 0.5,
                    "created_at": now,
                }

    def rows() -> Iterator[dict[str, Any]]:
        for g in range(versions):
            for i, m, fp, version in generation(g):
                yield {
                    "model_id": i + 1,
                    "version": version,
                    "fingerprint": fp,
                    "status": "registered",
                    "inputs": m.inputs if g == versions - 1 else empty,
                    "metrics": metrics,
                    "gates": empty,
                    "lineage": lineage[m.spec.pipeline],
                    "signed": False,
                    "run_id": g * len(todo) + i + 1,
                    "created_at": now,
                }

    deploys = (
        {
            "model_id": i + 1,
            "env": "test",
            "version": m.version,
            "commit": "c" * 40,
            "kind": "deploy",
            "actor": "bench",
            "created_at": now,
        }
        for i, m in enumerate(todo)
    )
    t1 = time.perf_counter()
    raw = store.engine.raw_connection()  # the driver's executemany: no ORM, no per-row Core work
    try:
        cur = raw.cursor()
        for table, source in (
            (PipelineVersion, iter(pipes)),
            (Model, models),
            (Run, runs()),
            (ModelVersion, rows()),
            (Deployment, deploys),
        ):
            for batch in _batches(source):
                sql, params = _driver_rows(store.engine.dialect, table.__table__, batch)
                cur.executemany(sql, params)
        raw.commit()
    finally:
        raw.close()
    store.close()
    return {
        "models": len(todo),
        "versions": len(todo) * versions,
        "plan_seconds": round(planned, 2),
        "insert_seconds": round(time.perf_counter() - t1, 2),
    }


def _driver_rows(dialect: Any, table: Any, batch: list[dict[str, Any]]) -> tuple[str, list[Any]]:
    """An INSERT in the driver's paramstyle and its rows as tuples: JSON columns as orjson text
    (a value object shared by many rows is encoded once), other values through the column
    type's bind processor (a datetime shared by every row, once)."""
    import orjson
    from sqlalchemy import JSON

    cols = list(batch[0])
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    names = ", ".join(dialect.identifier_preparer.quote(c) for c in cols)
    sql = f"INSERT INTO {table.name} ({names}) VALUES ({', '.join(mark for _ in cols)})"
    procs: list[Callable[[Any], Any] | None] = []
    for c in cols:
        t = table.c[c].type
        procs.append(None if isinstance(t, JSON) else t._cached_bind_processor(dialect))
    is_json = [isinstance(table.c[c].type, JSON) for c in cols]
    memo: dict[int, Any] = {}  # id -> encoded; the objects live in `batch` meanwhile
    out = []
    for row in batch:
        values = []
        for c, proc, js in zip(cols, procs, is_json, strict=True):
            v = row[c]
            if js or isinstance(v, datetime):
                key = id(v)
                if key not in memo:
                    memo[key] = orjson.dumps(v).decode() if js else proc(v)  # type: ignore[misc]
                values.append(memo[key])
            else:
                values.append(v if proc is None else proc(v))
        out.append(tuple(values))
    return sql, out


def percentiles(times: list[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds."""
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"p50_ms": round(statistics.median(ordered) * 1e3, 2), "p99_ms": round(p99 * 1e3, 2)}


def timed(fn: Callable[[int], Any], requests: int) -> dict[str, float]:
    """Latencies of `requests` calls of fn(k) after 5 warm-up calls."""
    for k in range(5):
        fn(k)
    times = []
    for k in range(requests):
        start = time.perf_counter()
        fn(k)
        times.append(time.perf_counter() - start)
    return percentiles(times)


def inproc_plan(root: Path) -> float:
    """Seconds of plan() in this process (imports warm); checks nothing is to train."""
    from modelworks.plan import plan
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

    started = time.perf_counter()
    ws = Workspace.load(root)
    store = Store(ws.registry_url)
    summary = plan(ws, store).summary
    store.close()
    seconds = time.perf_counter() - started
    if summary.get("create") or summary.get("update"):
        raise SystemExit(f"the seeded fleet is not unchanged: {summary}")
    return seconds


def api(root: Path, n: int, requests: int) -> dict[str, Any]:
    """The control-plane API over the seeded registry: one model's versions, list pages."""
    import httpx

    from modelworks.api import create_app
    from modelworks.registry.listing import encode_cursor
    from modelworks.testing import serve_on_loopback
    from modelworks.workspace import Workspace

    ws = Workspace.load(root)
    rng = random.Random(7)
    names = [fleet.model_name(rng.randrange(n)) for _ in range(requests + 5)]
    starts = [rng.randrange(n - 100) for _ in range(requests + 5)]
    out: dict[str, Any] = {}
    with serve_on_loopback(create_app(ws)) as base, httpx.Client(base_url=base) as http:

        def one(k: int) -> None:
            r = http.get(f"/api/v1/models/default/{names[k]}")
            if r.status_code != 200 or not r.json()["versions"]:
                raise SystemExit(f"GET {names[k]}: {r.status_code} {r.text[:300]}")

        def page(cursor: Callable[[int], str | None]) -> Callable[[int], None]:
            def get(k: int) -> None:
                c = cursor(k)
                r = http.get(
                    "/api/v1/models", params={"limit": 100, **({"cursor": c} if c else {})}
                )
                if r.status_code != 200 or len(r.json()["items"]) != 100:
                    raise SystemExit(f"GET /api/v1/models: {r.status_code} {r.text[:300]}")

            return get

        out["get_model"] = timed(one, requests)
        out["list_first_page"] = timed(page(lambda k: None), requests)
        deep = page(lambda k: encode_cursor("default", fleet.model_name(starts[k])))
        out["list_deep_page"] = timed(deep, requests)
    return out


def floor(root: Path) -> dict[str, float]:
    """The least any plan does: json.load every spec (page cache warm) + `git status`."""
    baselines.parse_floor(root / "models")
    parse = min(baselines.parse_floor(root / "models") for _ in range(3))
    status = min(baselines.git_status(root) for _ in range(3))
    return {"parse_seconds": parse, "git_status_seconds": status, "seconds": parse + status}


def one_size(n: int, args: argparse.Namespace, scratch: Path, url: str | None) -> dict[str, Any]:
    """Build, seed and time one fleet of n specs."""
    root = scratch / f"scale-{n}"
    done = root / ".mw" / "scale-fleet.json"
    if args.reuse and done.is_file():  # built and seeded by an earlier run with --keep
        built = json.loads(done.read_text())
    else:
        shutil.rmtree(root, ignore_errors=True)
        t = time.perf_counter()
        built = fleet.build(root, n, registry_url=url)
        built["build_seconds"] = round(time.perf_counter() - t, 1)
        built["seed"] = seed(root, args.versions)
        done.write_text(json.dumps(built))
    out: dict[str, Any] = {"fleet": built, "floor": floor(root)}
    r = args.repeats
    out["plan_inproc"] = statistics.median(inproc_plan(root) for _ in range(r))
    mw = shutil.which("mw") or "mw"
    cli = [measure([mw, "plan", "--json", "-C", str(root)]) for _ in range(r)]
    out["plan_cli"] = statistics.median(c["seconds"] for c in cli)
    out["plan_cli_rss_mib"] = max(c["rss_mib"] for c in cli)
    status = [measure([mw, "status", "--json", "-C", str(root)]) for _ in range(r)]
    if len(json.loads(status[0]["stdout"])["models"]) != n:
        raise SystemExit(f"mw status --json did not list {n} models")
    out["status_cli"] = statistics.median(c["seconds"] for c in status)
    out["api"] = api(root, n, args.requests)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return out


COSTS: list[tuple[str, Callable[[dict[str, Any]], float]]] = [
    ("floor: json.load every spec + git status (s)", lambda r: r["floor"]["seconds"]),
    ("plan() in-process, unchanged, warm (s)", lambda r: r["plan_inproc"]),
    ("mw plan --json, fresh process (s)", lambda r: r["plan_cli"]),
    ("mw status --json, fresh process (s)", lambda r: r["status_cli"]),
    ("GET /api/v1/models/{t}/{name}, p50 (ms)", lambda r: r["api"]["get_model"]["p50_ms"]),
    ("GET /api/v1/models/{t}/{name}, p99 (ms)", lambda r: r["api"]["get_model"]["p99_ms"]),
    ("GET /api/v1/models first page, p99 (ms)", lambda r: r["api"]["list_first_page"]["p99_ms"]),
    ("GET /api/v1/models deep page, p99 (ms)", lambda r: r["api"]["list_deep_page"]["p99_ms"]),
    ("seed: insert rows (s)", lambda r: r["fleet"]["seed"]["insert_seconds"]),
]


def growth(results: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each cost at each size and its growth from the smallest size."""
    sizes = sorted(results)
    base = results[sizes[0]]
    rows = []
    for label, get in COSTS:
        row: dict[str, Any] = {"cost": label}
        for n in sizes:
            row[str(n)] = round(get(results[n]), 3)
            if n != sizes[0]:
                row[f"growth {n}/{sizes[0]}"] = round(get(results[n]) / get(base), 2)
        rows.append(row)
    return rows


def show(rows: list[dict[str, Any]], title: str) -> None:
    """Print the growth table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in rows[0]:
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console(width=160).print(table)


@contextmanager
def scratch_postgres(where: str) -> Iterator[Callable[[int], str]]:
    """Scratch databases on a trusted PostgreSQL at host:port, dropped on the way out."""
    import psycopg

    host, _, port = where.partition(":")
    made: list[str] = []
    admin = f"host={host} port={port or 5432} user=postgres dbname=postgres"

    def make(n: int) -> str:
        name = f"mw_scale_{n}_{int(time.time())}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"postgresql+psycopg://postgres@{host}:{port or 5432}/{name}"

    try:
        yield make
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in made:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    """Run every size, save JSON, print the growth table."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[9000, 90000])
    ap.add_argument("--versions", type=int, default=10, help="versions per model")
    ap.add_argument("--requests", type=int, default=300, help="API requests per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each plan/status (median)")
    ap.add_argument("--postgres", metavar="HOST:PORT", help="seed a scratch PostgreSQL instead")
    ap.add_argument("--scratch", type=Path, help="where fleets are built (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the built fleets")
    ap.add_argument(
        "--reuse", action="store_true", help="time fleets kept in --scratch by an earlier run"
    )
    args = ap.parse_args(argv)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="mw-scale-"))
    results: dict[int, dict[str, Any]] = {}
    try:
        with contextlib_or_null(args.postgres) as make_url:
            for n in sorted(args.sizes):
                url = make_url(n) if make_url else None
                results[n] = one_size(n, args, scratch, url)
                print(f"{n}: {json.dumps(results[n]['fleet'])}", file=sys.stderr)
    finally:
        if not args.keep and args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    rows = growth(results)
    backend = "postgresql" if args.postgres else "sqlite"
    doc = {"machine": machine(), "backend": backend, "args": vars(args), "sizes": results}
    doc["growth"] = rows
    path = baselines.save_results(f"scale-{backend}", doc)
    show(rows, f"scale ({backend}, {args.versions} versions per model)")
    print(f"results: {path}")
    return 0


@contextmanager
def contextlib_or_null(where: str | None) -> Iterator[Callable[[int], str] | None]:
    """scratch_postgres(where), or None for SQLite (the workspace's own registry)."""
    if where is None:
        yield None
        return
    with scratch_postgres(where) as make:
        yield make


if __name__ == "__main__":
    sys.exit(main())
