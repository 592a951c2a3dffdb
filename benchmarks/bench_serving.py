"""Benchmark `mw serve`: N deployed models, random model per request, against a bare ceiling.

    python benchmarks/bench_serving.py --models 1000 --seconds 10 --concurrency 8 --json out.json
    python benchmarks/bench_serving.py --auth token   # serving.auth: token, a viewer token sent

`--auth none|token` sets `serving.auth` (left unset by default, so the script also runs on
trees older than the setting). With `token`, a viewer token is made through the library
(modelworks.security.tokens.create_token) and every request, to both servers, carries
`Authorization: Bearer <token>` (the bare ceiling ignores it).

Builds a workspace with N tiny skops models (real OCI store, real git deploy repo), starts the
inference server with uvicorn in a subprocess on 127.0.0.1, and drives it from this process over
loopback (httpx, asyncio). The ceiling is a bare Starlette endpoint in another subprocess that
parses the same JSON and calls predict on the requested model, picked at random of the same N per
request (all N loaded up front). Reports throughput, p50/p99 latency, their ratios to the
ceiling (per run's median round and paired round by round), and the cold-load time per model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

N_FEATURES = 4


# -- workspace ----------------------------------------------------------------------------------


def build_fleet(root: Path, n: int) -> list[str]:
    """A git workspace with n tiny sklearn models deployed to `test`; return their names."""
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    from modelworks import _git
    from modelworks.artifacts.oci import OCIStore
    from modelworks.gitops.deploy import DeployConfig, deploy

    _git.init(root)
    (root / ".gitignore").write_text(".mw/\n")
    _git.commit(root, [".gitignore"], "init")
    store = OCIStore(root / ".mw" / "oci")
    from modelworks.artifacts.sign import generate_keypair, sign_dir
    from modelworks.workspace import Settings

    signing = Settings().signing
    private = root / signing.private_key
    generate_keypair(private, root / signing.public_key)  # the server refuses unsigned models
    rng = np.random.default_rng(0)
    configs, names = [], []
    for i in range(n):
        name = f"m{i:05d}"
        x = rng.normal(size=(40, N_FEATURES))
        y = (x @ rng.normal(size=N_FEATURES) > 0).astype(int)
        folder = root.parent / "build" / name
        folder.mkdir(parents=True)
        sio.dump(LogisticRegression().fit(x, y), folder / "model.skops")
        meta = {
            "name": name,
            "version": "1",
            "runtime": "sklearn",
            "model_file": "model.skops",
            "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, N_FEATURES]}],
            "outputs": [{"name": "output-0", "datatype": "INT64", "shape": [-1]}],
            "feature_names": [f"f{j}" for j in range(N_FEATURES)],
            "task": "classification",
        }
        (folder / "metadata.json").write_text(json.dumps(meta))
        sign_dir(folder, private)
        ref = store.write_image(f"bench/{name}", "1", folder, {})
        configs.append(
            DeployConfig(
                name=name,
                image_repository=f"bench/{name}",
                image_namespace="bench",
                version="1",
                runtime="sklearn",
                artifact_digest=ref.digest,
                artifact_uri=f"oci://bench/{name}@{ref.digest}",
            )
        )
        names.append(name)
    deploy(root, "test", configs, f"deploy {n} models")
    return names


# -- servers (run as subprocesses) ------------------------------------------------------------


def settings(auth: str | None) -> Any:
    """The workspace settings; `serving.auth` only when asked (older trees lack the field)."""
    from modelworks.workspace import Settings

    return Settings(serving={"auth": auth}) if auth else Settings()


def make_token(root: Path, auth: str | None) -> dict[str, str]:
    """The request headers of `auth`: with token, a new viewer token made through the library."""
    headers = {"content-type": "application/json"}
    if auth != "token":
        return headers
    from modelworks.registry.store import Store
    from modelworks.security.tokens import create_token
    from modelworks.security.users import add_user
    from modelworks.workspace import Workspace

    store = Store(Workspace(root, settings(auth)).registry_url)
    add_user(store, "bench", actor="bench")
    made = create_token(store, user="bench", role="viewer", expires="1d", actor="bench")
    store.engine.dispose()
    return {**headers, "authorization": f"Bearer {made['token']}"}


def mw_app(root: Path, auth: str | None = None, sample_rate: float | None = None) -> Any:
    """The real app over the benchmark workspace (prediction logging at `sample_rate`; None:
    the setting's default, as `mw serve` runs)."""
    from modelworks.serving import create_app
    from modelworks.workspace import Workspace

    ws = Workspace(root, settings(auth))
    return create_app(ws, "test", sample_rate=sample_rate, poll_interval=30)


def serve_mw(
    root: Path, port: int, auth: str | None = None, sample_rate: float | None = None
) -> None:
    """The real server: create_app over the workspace, uvicorn, one worker."""
    import uvicorn

    app = mw_app(root, auth, sample_rate)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def bare_app(root: Path) -> Any:
    """The ceiling: parse JSON, one numpy conversion, predict on the named model (every model of
    the fleet is loaded up front, so a random model per request costs what it costs mw serve's
    warm cache), answer JSON."""
    import orjson
    import skops.io as sio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    models = {}
    for folder in sorted((root.parent / "build").iterdir()):
        path = folder / "model.skops"
        models[folder.name] = sio.load(path, trusted=sio.get_untrusted_types(file=path))

    async def infer(request: Request) -> Response:
        name = request.path_params["name"]
        model = models.get(name)
        if model is None:
            return Response(b'{"error": "not found"}', 404, media_type="application/json")
        req = orjson.loads(await request.body())
        tensor = req["inputs"][0]
        x = np.array(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
        y = model.predict(x)
        out = {
            "model_name": name,
            "outputs": [
                {"name": "output-0", "shape": list(y.shape), "datatype": "INT64", "data": y}
            ],
        }
        return Response(
            orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
        )

    return Starlette(routes=[Route("/v2/models/{name:path}/infer", infer, methods=["POST"])])


def serve_bare(root: Path, port: int) -> None:
    """The ceiling over HTTP."""
    import uvicorn

    uvicorn.run(bare_app(root), host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def _asgi_post(app: Any, path: str, payload: bytes, headers: dict[str, str]) -> int:
    """One POST through the ASGI app directly (no sockets); return the status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    messages = [{"type": "http.request", "body": payload, "more_body": False}]
    status = 0

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def in_process(
    root: Path,
    names: list[str],
    requests: int,
    headers: dict[str, str],
    auth: str | None,
    sample_rate: float | None,
    rounds: int = 3,
) -> dict[str, Any]:
    """CPU microseconds per request through each app with no network (warm models), rounds
    interleaved; CPU time, not wall time, so other jobs on the machine move it less."""
    rng = random.Random(2)
    payloads = [(f"/v2/models/{rng.choice(names)}/infer", body(rng)) for _ in range(requests)]

    async def warm(app: Any) -> None:
        for name in names:  # warm every model: a random sample would leave some cold
            await _asgi_post(app, f"/v2/models/{name}/infer", body(rng), headers)

    async def go(app: Any) -> float:
        t0 = time.process_time()
        for path, payload in payloads:
            if await _asgi_post(app, path, payload, headers) != 200:
                raise SystemExit(f"in-process request to {path} failed")
        return (time.process_time() - t0) / len(payloads) * 1e6

    async def both() -> tuple[list[float], list[float]]:
        mw, bare = mw_app(root, auth, sample_rate), bare_app(root)
        await warm(mw)
        await warm(bare)
        pairs = [(await go(mw), await go(bare)) for _ in range(rounds)]
        return [m for m, _ in pairs], [b for _, b in pairs]

    mw_runs, bare_runs = asyncio.run(both())
    mw_us, bare_us = statistics.median(mw_runs), statistics.median(bare_runs)
    return {
        "requests": requests,
        "rounds": rounds,
        "mw_us": round(mw_us, 1),
        "bare_us": round(bare_us, 1),
        "mw_us_rounds": _r3(mw_runs),
        "bare_us_rounds": _r3(bare_runs),
        "overhead_us": round(mw_us - bare_us, 1),
        "ratio": round(bare_us / mw_us, 3),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(
    kind: str, root: Path, auth: str | None = None, sample_rate: float | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a server subprocess and wait until it answers."""
    import httpx

    port = _free_port()
    extra = ["--auth", auth] if auth else []
    if sample_rate is not None:
        extra += ["--sample-rate", str(sample_rate)]
    proc = subprocess.Popen(
        [sys.executable, __file__, f"--serve-{kind}", str(root), "--port", str(port), *extra]
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # the ceiling loads every model first
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base}/v2/health/live", timeout=1)
            return proc, base
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{kind} server did not start")


# -- load generator -----------------------------------------------------------------------------


def body(rng: random.Random) -> bytes:
    row = [round(rng.uniform(-2, 2), 3) for _ in range(N_FEATURES)]
    return json.dumps(
        {"inputs": [{"name": "input-0", "shape": [1, N_FEATURES], "datatype": "FP64", "data": row}]}
    ).encode()


async def _drive(
    base: str, names: list[str], seconds: float, concurrency: int, headers: dict[str, str]
) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(seed: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        rng = random.Random(seed)
        while time.perf_counter() < deadline:
            name = rng.choice(names)
            t0 = time.perf_counter()
            r = await http.post(
                f"/v2/models/{name}/infer",
                content=body(rng),
                headers=headers,
            )
            latencies.append(time.perf_counter() - t0)
            errors += r.status_code != 200

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as http:
        start_t = time.perf_counter()
        await asyncio.gather(*(worker(i, http) for i in range(concurrency)))
        elapsed = time.perf_counter() - start_t
    lat = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, plus every round's rps."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    return {**ordered[len(ordered) // 2], "rounds_rps": [r["rps"] for r in runs]}


def paired(mw: list[dict[str, Any]], bare: list[dict[str, Any]]) -> dict[str, Any]:
    """Round-by-round ratios (each mw round against the bare round right after it): medians."""
    out: dict[str, Any] = {}
    for key in ("rps", "p50_ms", "p99_ms"):
        ratios = [m[key] / b[key] for m, b in zip(mw, bare, strict=True)]
        out[key] = {"median": round(statistics.median(ratios), 3), "rounds": _r3(ratios)}
    return out


def _r3(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]


def cold_pass(base: str, names: list[str], headers: dict[str, str]) -> dict[str, Any]:
    """Hit every model once, in order (each first request loads it); then read load metrics."""
    import httpx

    rng = random.Random(1)
    lat = []
    with httpx.Client(base_url=base, timeout=60, headers=headers) as http:
        for name in names:
            t0 = time.perf_counter()
            r = http.post(f"/v2/models/{name}/infer", content=body(rng))
            lat.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise SystemExit(f"cold request to {name} failed: {r.status_code} {r.text}")
        metrics = http.get("/metrics").text
    total = _metric(metrics, r'mw_serving_model_load_seconds_sum\{runtime="sklearn"\}')
    count = _metric(metrics, r'mw_serving_model_load_seconds_count\{runtime="sklearn"\}')
    ms = np.array(lat) * 1000
    return {
        "models": len(names),
        "first_request_p50_ms": round(float(np.median(ms)), 2),
        "first_request_p99_ms": round(float(np.percentile(ms, 99)), 2),
        "load_ms_mean": round(total / count * 1000, 2) if count else None,
        "loaded_models": _metric(metrics, r"mw_serving_loaded_models"),
    }


def _metric(text: str, pattern: str) -> float:
    match = re.search(rf"^{pattern} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


# -- main ---------------------------------------------------------------------------------------


def fleet_at(args: argparse.Namespace) -> tuple[Path, Path | None, list[str], float]:
    """(workspace, temp folder to remove, model names, build seconds): --workspace DIR reuses
    the fleet built there by an earlier run with the same --models."""
    tmp = None if args.workspace else Path(tempfile.mkdtemp(prefix="mw-bench-serving-"))
    base = args.workspace or tmp
    assert base is not None
    root, build = base / "ws", base / "build"
    t0 = time.perf_counter()
    if build.is_dir() and len(list(build.iterdir())) == args.models:
        names = sorted(p.name for p in build.iterdir())
    else:
        shutil.rmtree(base, ignore_errors=True)
        root.mkdir(parents=True)
        names = build_fleet(root, args.models)
    return root, tmp, names, time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build, serve, measure; return the result document."""
    root, tmp, names, build_s = fleet_at(args)
    rate = args.sample_rate
    try:
        headers = make_token(root, args.auth)
        inproc = in_process(
            root, names, args.inprocess_requests, headers, args.auth, rate, args.rounds
        )
        mw, mw_base = start("mw", root, args.auth, rate)
        bare, bare_base = start("bare", root)
        try:
            cold = cold_pass(mw_base, names, headers)
            if args.warmup:  # warm connections, allocators and code paths of both servers
                for base in (mw_base, bare_base):
                    warm = min(2.0, args.seconds)
                    asyncio.run(_drive(base, names, warm, args.concurrency, headers))
            runs: dict[str, list[dict[str, Any]]] = {"mw": [], "bare": []}
            for _ in range(args.rounds):  # interleaved, so load from elsewhere hits both alike
                for key, base in (("mw", mw_base), ("bare", bare_base)):
                    runs[key].append(
                        asyncio.run(_drive(base, names, args.seconds, args.concurrency, headers))
                    )
            served, ceiling = _median(runs["mw"]), _median(runs["bare"])
        finally:
            for proc in (mw, bare):
                proc.terminate()
                proc.wait(timeout=30)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "benchmark": "serving",
        "models": args.models,
        "auth": args.auth or "unset",
        "sample_rate": "default" if rate is None else rate,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "build_seconds": round(build_s, 1),
        "mw_serve": served,
        "bare_starlette": ceiling,
        "ratio_rps": round(served["rps"] / ceiling["rps"], 3),
        "ratio_p50": round(served["p50_ms"] / ceiling["p50_ms"], 3),
        "ratio_p99": round(served["p99_ms"] / ceiling["p99_ms"], 3),
        "paired": paired(runs["mw"], runs["bare"]),
        "cold": cold,
        "in_process": inproc,
    }


def table(result: dict[str, Any]) -> str:
    """A plain-text table of the result."""
    rows = [("", "rps", "p50 ms", "p99 ms", "errors")]
    for key in ("mw_serve", "bare_starlette"):
        r = result[key]
        rows.append((key, str(r["rps"]), str(r["p50_ms"]), str(r["p99_ms"]), str(r["errors"])))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    cold = result["cold"]
    lines += [
        f"ratio mw/bare (median rounds): throughput {result['ratio_rps']}, "
        f"p50 {result['ratio_p50']}, p99 {result['ratio_p99']}",
        "paired rounds (median, rounds): "
        + ", ".join(f"{k} {v['median']} {v['rounds']}" for k, v in result["paired"].items()),
        f"cold: {cold['models']} models, load {cold['load_ms_mean']} ms/model (mean), first "
        f"request p50 {cold['first_request_p50_ms']} ms, p99 {cold['first_request_p99_ms']} ms",
    ]
    ip = result["in_process"]
    lines.append(
        f"in-process (no network, CPU time): mw {ip['mw_us']} us/request, bare {ip['bare_us']} us, "
        f"overhead {ip['overhead_us']} us, ratio {ip['ratio']}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument("--inprocess-requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per server")
    parser.add_argument(
        "--auth", choices=("none", "token"), help="serving.auth of mw serve (default: unset)"
    )
    parser.add_argument(
        "--sample-rate",
        type=float,
        help="serving.sample_rate of mw serve (default: the setting's default, as users run it)",
    )
    parser.add_argument("--workspace", type=Path, help="build the fleet here, reuse it if built")
    parser.add_argument("--serve-mw", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_mw:
        return serve_mw(args.serve_mw, args.port, args.auth, args.sample_rate)
    if args.serve_bare:
        return serve_bare(args.serve_bare, args.port)
    result = run(args)
    print(json.dumps(result, indent=2))
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return None


if __name__ == "__main__":
    main()
