"""Helpers to build real workspaces in tests: yours and ours (like starlette.testclient)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from modelworks import _git
from modelworks.workspace import Workspace

TINY_PIPELINE = '''\
"""A tiny, fast classification pipeline for tests."""
import numpy as np
from sklearn.linear_model import LogisticRegression


def prepare(data_path, params):
    table = np.loadtxt(data_path, delimiter=",", skiprows=1, ndmin=2)
    X, y = table[:, :-1], table[:, -1].astype(int)
    cut = int(len(X) * 0.75)
    return {"X_train": X[:cut], "y_train": y[:cut], "X_test": X[cut:], "y_test": y[cut:]}


def train(data, params):
    model = LogisticRegression(C=params.get("C", 1.0), max_iter=200)
    return model.fit(data["X_train"], data["y_train"])


def evaluate(model, data):
    return {"accuracy": float((model.predict(data["X_test"]) == data["y_test"]).mean())}
'''


def make_workspace(root: Path, **settings: Any) -> Workspace:
    """A new workspace (git repo + modelworks.yaml) at root; `settings` are merged into the yaml."""
    import yaml

    from modelworks.init import init
    from modelworks.workspace import CONFIG_FILE, load_settings

    ws = init(root)
    if settings:
        cfg = yaml.safe_load((root / CONFIG_FILE).read_text())
        for key, value in settings.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key].update(value)
            else:
                cfg[key] = value
        (root / CONFIG_FILE).write_text(yaml.safe_dump(cfg, sort_keys=False))
        _git.commit(root, [CONFIG_FILE], "test settings")
        ws = Workspace(root, load_settings(root / CONFIG_FILE))
    return ws


def commit_paths(paths: list[Path], message: str) -> str | None:
    """Commit these files in the git repository that holds them (what a user does before apply)."""
    if not paths:
        return None
    top = paths[0].resolve().parent
    while not (top / ".git").exists():
        if top.parent == top:
            return None  # not in a repository: nothing to commit to
        top = top.parent
    return _git.commit(top, [os.path.relpath(p.resolve(), top) for p in paths], message)


def write_pipeline(
    ws: Workspace,
    name: str = "tiny",
    version: str = "v1",
    source: str = TINY_PIPELINE,
    *,
    commit: bool = True,
) -> Path:
    """Write pipelines/<name>/{version,pipeline.py} and commit them (unless commit=False)."""
    folder = ws.pipelines_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "version").write_text(version + "\n")
    (folder / "pipeline.py").write_text(source)
    if commit:
        commit_paths([folder], f"pipeline {name} {version}")
    return folder


def write_dataset(
    ws: Workspace, rel: str, rows: int = 200, features: int = 4, seed: int = 0
) -> Path:
    """A separable two-class CSV (label last) at `rel` inside the workspace."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    path = ws.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ",".join([*(f"f{i}" for i in range(features)), "label"])
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", header=header, comments="", fmt="%.6g")
    return path


def write_spec(
    ws: Workspace,
    name: str,
    dataset: str,
    *,
    pipeline: str = "tiny",
    version: str = "v1",
    fmt: str = "json",
    commit: bool = True,
    folder: str | None = None,
    **extra: Any,
) -> Path:
    """A spec in the reference format (extra keys are merged in), committed unless commit=False;
    `folder` puts it in models/<folder>/ (a tenant's folder).

    Plan and apply train only committed specs, so a test writes them the way a user does.
    """
    payload: dict[str, Any] = {
        "data_source": {"type": "dvc", "dataset": dataset},
        "model_name": name,
        "kubeflow_pipeline": pipeline,
        "kubeflow_pipeline_version": f"{pipeline}-{version}",
        "runtime_name": "sklearn",
        "model_hyperparameters": {},
    }
    payload.update(extra)
    path = (ws.models_dir / folder if folder else ws.models_dir) / f"{name}.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        path.write_text(json.dumps(payload, indent=2))
    else:
        import yaml

        path.write_text(yaml.safe_dump(payload))
    if commit:
        commit_paths([path], f"spec {name}")
    return path


def small_fleet(ws: Workspace, models: int = 3, datasets: int = 2) -> list[str]:
    """A pipeline, `datasets` versioned datasets and `models` specs over them; committed."""
    from modelworks.data.add import add

    write_pipeline(ws, commit=False)
    names = []
    for d in range(datasets):
        write_dataset(ws, f"data/set{d}/data.csv", seed=d)
    for i in range(models):
        name = f"model-{i}"
        write_spec(
            ws,
            name,
            f"data/set{i % datasets}/data.csv",
            commit=False,
            model_hyperparameters={"C": 1.0 + i},
        )
        names.append(name)
    for d in range(datasets):
        add(ws, ws.root / f"data/set{d}/data.csv", commit=False)
    _git.commit(ws.root, ["models", "pipelines", "data"], "small fleet")
    return names


def run_cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    """Run `mw ARGS` in-process under pytest's capsys; return (exit code, stdout, stderr)."""
    from modelworks.cli import main

    capsys.readouterr()
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def mw(capsys: Any, ws: Workspace, *args: str) -> tuple[int, str, str]:
    """Run `mw ARGS -C ws` in-process; return (exit code, stdout, stderr)."""
    return run_cli(capsys, *args, "-C", str(ws.root))


def mw_json(capsys: Any, ws: Workspace, *args: str) -> Any:
    """Run `mw ARGS -C ws --json`, require exit 0, and return the parsed output."""
    code, out, err = mw(capsys, ws, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def spawn_mw(ws: Workspace, *args: str, **popen: Any) -> subprocess.Popen[str]:
    """The real `mw ARGS` in a process of its own session (so killpg stops all of it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "modelworks", *args],
        cwd=ws.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **popen,
    )


class AppClient:
    """A blocking client for an ASGI app over httpx.ASGITransport, running its lifespan.

    Starlette's TestClient warns under `filterwarnings = error`; this is the same idea.
    """

    def __init__(self, app: Any, base_url: str = "http://mw.test", root_path: str = "") -> None:
        self.app = app
        self.base_url = base_url
        self.root_path = root_path  # as a proxy that mounts the app under a prefix sets it

    def __enter__(self) -> AppClient:
        import httpx
        from anyio.from_thread import start_blocking_portal

        self._portal_cm = start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        transport = httpx.ASGITransport(app=self.app, root_path=self.root_path)
        self.http = httpx.AsyncClient(transport=transport, base_url=self.base_url)
        self._lifespan = self.app.router.lifespan_context(self.app)
        self.portal.call(self._lifespan.__aenter__)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.portal.call(self._lifespan.__aexit__, None, None, None)
            self.portal.call(self.http.aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def request(self, method: str, url: str, **kw: Any) -> Any:
        return self.portal.call(lambda: self.http.request(method, url, **kw))

    def get(self, url: str, **kw: Any) -> Any:
        return self.portal.call(lambda: self.http.get(url, **kw))

    def post(self, url: str, **kw: Any) -> Any:
        return self.portal.call(lambda: self.http.post(url, **kw))

    def infer(self, model: str, x: np.ndarray, datatype: str = "FP64") -> Any:
        """POST one named tensor to the model's Open Inference Protocol endpoint."""
        tensor = {
            "name": "input-0",
            "datatype": datatype,
            "shape": list(x.shape),
            "data": x.ravel().tolist(),
        }
        return self.post(f"/v2/models/{model}/infer", json={"inputs": [tensor]})


def slow_fleet(ws: Workspace, n: int, sleep: float) -> None:
    """n models over one dataset whose training sleeps `sleep` seconds: for kill/stop tests."""
    from modelworks.data.add import add

    source = TINY_PIPELINE.replace(
        "def train(data, params):",
        f"def train(data, params):\n    import time; time.sleep({sleep})",
    )
    write_pipeline(ws, source=source, commit=False)
    write_dataset(ws, "data/d/data.csv")
    for i in range(n):
        write_spec(
            ws, f"m{i:02d}", "data/d/data.csv", commit=False, model_hyperparameters={"C": 1 + i}
        )
    add(ws, ws.root / "data/d/data.csv", commit=False)
    _git.commit(ws.root, ["models", "pipelines", "data"], "slow fleet")


def deploy_iris(ws: Workspace, env: str = "test", name: str = "iris", version: str = "1") -> Any:
    """Train a small iris classifier, package it signed in the workspace store and deploy it to
    `env` (committed); return its DeployConfig. For server tests that need a model to answer."""
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from modelworks.apply import signing_key
    from modelworks.artifacts.oci import OCIStore
    from modelworks.artifacts.sign import sign_dir
    from modelworks.gitops.deploy import DeployConfig, deploy

    x, y = load_iris(return_X_y=True)
    work = ws.state_dir / "build" / f"{name}-{version}"
    work.mkdir(parents=True)
    sio.dump(LogisticRegression(max_iter=1000).fit(x, y), work / "model.skops")
    meta = {
        "name": name,
        "version": version,
        "runtime": "sklearn",
        "model_file": "model.skops",
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}],
        "outputs": [{"name": "output-0", "datatype": "INT64", "shape": [-1]}],
        "task": "classification",
    }
    (work / "metadata.json").write_text(json.dumps(meta))
    sign_dir(work, signing_key(ws))
    repo = f"modelworks/{name}"
    ref = OCIStore(ws.oci_dir).write_image(repo, version, work, {"dev.modelworks.version": version})
    cfg = DeployConfig(
        name=name,
        image_repository=repo,
        image_namespace="modelworks",
        version=version,
        runtime="sklearn",
        artifact_digest=ref.digest,
        artifact_uri=f"oci://{repo}@{ref.digest}",
    )
    deploy(ws.deploy_repo, env, [cfg], f"deploy {name} {version}")
    return cfg


@contextlib.contextmanager
def serve_on_loopback(app: Any, timeout: float = 20.0) -> Iterator[str]:
    """Run `app` under a real uvicorn on 127.0.0.1 (a free port) in a thread; yield its base URL.

    The server is told to exit on leaving the block and joined for at most `timeout` seconds.
    """
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="mw-test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{port}")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


def register_models(store: Any, names: list[tuple[str, str]], pipeline: str = "tiny") -> None:
    """Write registered models straight into the registry: for each (tenant, name) a model, a
    registered version with metrics, a succeeded run and a test deployment. For API and read
    tests that need models without training them."""
    from modelworks.registry.models import Deployment, Model, ModelVersion, Run

    with store.session() as s:
        for i, (tenant, name) in enumerate(names):
            m = Model(name=name, tenant=tenant, pipeline=pipeline, spec_path=f"models/{name}.json")
            s.add(m)
            s.flush()
            fp = f"{i:064x}"
            run = Run(model_id=m.id, tenant=tenant, fingerprint=fp, version=fp[-10:])
            run.status, run.attempts, run.duration = "succeeded", 1, 0.5
            s.add(run)
            s.flush()
            s.add(
                ModelVersion(
                    model_id=m.id,
                    version=fp[-10:],
                    fingerprint=fp,
                    status="registered",
                    metrics={"accuracy": 0.9},
                    lineage={"data_hash": "d" * 32, "pipeline_version": f"{pipeline}-v1"},
                    run_id=run.id,
                )
            )
            s.add(
                Deployment(
                    model_id=m.id,
                    env="test",
                    version=fp[-10:],
                    commit="c" * 40,
                    kind="deploy",
                    actor="test",
                )
            )
