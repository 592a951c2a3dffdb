"""`GET /api/v1/models` latency at fleet scale, beside a direct SQL query of the same rows.

    python benchmarks/api_models.py --models 9000 --requests 200

Seeds a token-mode workspace's SQLite registry with N registered models (a version, a run and
a test deployment each, in 30 tenants) without training them, serves the API under uvicorn on
loopback, and times `limit=100` pages with a platform admin's token: the first page and a
deep one (the page starting at model N-1000, reached by its cursor). The baseline is the same
page read with one SQL statement (models after the cursor joined to their latest version) on
the same database. Prints JSON with p50/p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SQL = """
SELECT m.tenant, m.name, m.pipeline, v.version, v.status, v.metrics
FROM models m LEFT JOIN model_versions v ON v.id = (
    SELECT max(id) FROM model_versions WHERE model_id = m.id)
WHERE m.tenant > ? OR (m.tenant = ? AND m.name > ?)
ORDER BY m.tenant, m.name LIMIT 100
"""


def seed(root: Path, n: int) -> tuple[Any, str]:
    """A token-mode workspace with n registered models; returns (workspace, admin token)."""
    from modelworks.registry.store import Store
    from modelworks.security.tokens import bootstrap_token
    from modelworks.testing import make_workspace, register_models

    db = root / "registry.db"
    ws = make_workspace(root / "ws", auth={"mode": "token"}, registry={"url": f"sqlite:///{db}"})
    store = Store(ws.registry_url)
    register_models(store, [(f"t{i % 30:02d}", f"m{i:05d}") for i in range(n)])
    return ws, bootstrap_token(store, user="bench", actor="bench")["token"]


def percentiles(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"p50_ms": round(statistics.median(ordered) * 1e3, 2), "p99_ms": round(p99 * 1e3, 2)}


def timed(fn: Callable[[], Any], requests: int) -> dict[str, float]:
    for _ in range(5):
        fn()
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return percentiles(times)


def run(n: int, requests: int) -> dict[str, Any]:
    import httpx

    from modelworks.api import create_app
    from modelworks.registry.listing import decode_cursor, encode_cursor
    from modelworks.testing import serve_on_loopback

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws, token = seed(root, n)
        rows = sqlite3.connect(root / "registry.db").execute(
            "SELECT tenant, name FROM models ORDER BY tenant, name"
        )
        keys = rows.fetchall()
        deep = encode_cursor(*keys[n - 1001])
        out: dict[str, Any] = {"models": n, "requests": requests, "limit": 100}
        with serve_on_loopback(create_app(ws)) as base:
            client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})

            def page(cursor: str | None) -> Callable[[], Any]:
                params = {"limit": 100, **({"cursor": cursor} if cursor else {})}

                def get() -> None:
                    resp = client.get("/api/v1/models", params=params)
                    assert resp.status_code == 200
                    assert len(resp.json()["items"]) == 100

                return get

            out["api_first_page"] = timed(page(None), requests)
            out["api_deep_page"] = timed(page(deep), requests)
            client.close()
        db = sqlite3.connect(root / "registry.db")

        def sql(after: tuple[str, str]) -> Callable[[], Any]:
            def query() -> None:
                found = db.execute(SQL, (after[0], after[0], after[1])).fetchall()
                assert len(found) == 100

            return query

        out["sql_first_page"] = timed(sql(("", "")), requests)
        out["sql_deep_page"] = timed(sql(decode_cursor(deep)), requests)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=9000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    sys.stdout.write(json.dumps(run(args.models, args.requests), indent=2) + "\n")


if __name__ == "__main__":
    main()
