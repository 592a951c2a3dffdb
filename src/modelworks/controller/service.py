"""Running the controller as a service: `mw controller` (the loop plus its HTTP endpoints) and
`mw up` (the controller, one inference server per environment and the endpoints, in one process).

Signals: the first SIGINT/SIGTERM stops gracefully (running jobs finish, unstarted ones go back
to the queue, servers drain); a second one stops hard (the training workers are killed and
their runs re-queued, servers close their connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uvicorn

from modelworks import _net

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from modelworks.controller.loop import Controller
    from modelworks.workspace import Workspace

log = logging.getLogger("modelworks.controller")


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to us (several run in one process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(frozen=True)
class Endpoint:
    """One HTTP service of `mw up`."""

    name: str
    app: Any
    port: int


def setup_logging(level: int = logging.INFO) -> None:
    """Log the controller and the servers to stderr (the CLI's choice, not the library's)."""
    for name in ("modelworks.controller", "modelworks.serving"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )
            logger.addHandler(handler)
            logger.setLevel(level)


def check_port(host: str, port: int) -> None:
    """Refuse early, with a clear message, a port something else listens on."""
    _net.check_port(host, port, "controller.port / serving.port")


def _config(app: Starlette, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="on"
    )


@contextlib.contextmanager
def _signals(controller: Controller) -> Iterator[None]:
    """First SIGINT/SIGTERM stops gracefully; a second one stops hard."""

    def handler(signum: int, frame: Any) -> None:
        if controller.stopping.is_set():
            log.warning(
                "stopping now (signal %d again): killing running jobs; they are re-queued", signum
            )
            controller.hard_stop()
            return
        log.info("stopping (signal %d): running jobs finish, queued jobs stay queued", signum)
        controller.stop()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_controller(
    controller: Controller,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    interval: float | None = None,
    http: bool = True,
) -> None:
    """`mw controller`: the loop in this thread, the webhook endpoints in another."""
    from modelworks.controller.webhook import create_app

    server = None
    thread = None
    if http:
        port = port or controller.ws.settings.controller.port
        check_port(host, port)
        server = _Server(_config(create_app(controller, host=host), host, port))
        thread = threading.Thread(target=server.run, name="mw-controller-http", daemon=True)
        thread.start()
        log.info(
            "controller endpoints on http://%s:%d (POST /hooks/git, /healthz, /api/status)",
            host,
            port,
        )
    try:
        with _signals(controller):
            controller.run(interval)
    finally:
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(10)


def serving_envs(ws: Workspace) -> list[str]:
    """Environments `mw up` serves: those with deployments and those the line deploys to."""
    from modelworks import _git
    from modelworks._deployrepo import layout_of
    from modelworks.gitops.deploy import env_prefix

    has_commit = ws.deploy_repo.is_dir() and _git.head(ws.deploy_repo) is not None
    envs = []
    for env, cfg in ws.settings.environments.items():
        deployed = has_commit and bool(
            _git.ls_files(ws.deploy_repo, "HEAD", env_prefix(env, layout_of(ws.deploy_repo)))
        )
        if deployed or cfg.auto_deploy:
            envs.append(env)
    return envs


def up(
    controller: Controller,
    *,
    host: str = "127.0.0.1",
    interval: float | None = None,
    envs: list[str] | None = None,
    on_ready: Callable[[list[Endpoint]], None] | None = None,
    extra: list[Endpoint] | None = None,
) -> None:
    """`mw up`: the controller, an inference server per environment and the controller's
    endpoints in this process (plus `extra` ones, as the control-plane API the CLI adds),
    until SIGINT/SIGTERM stops them all."""
    from modelworks.controller.webhook import create_app as controller_app
    from modelworks.serving import create_app as serving_app

    ws = controller.ws
    ctl_app = controller_app(controller, host=host)
    endpoints = [Endpoint("controller", ctl_app, ws.settings.controller.port)]
    endpoints += extra or []
    base = ws.settings.serving.port
    for i, env in enumerate(envs if envs is not None else serving_envs(ws)):
        endpoints.append(Endpoint(f"serve:{env}", serving_app(ws, env, host=host), base + i))
    for e in endpoints:
        check_port(host, e.port)
    asyncio.run(_up(controller, endpoints, host, interval, on_ready))


def _reconciler(apps: list[Any], loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """A callback for the controller's thread that makes each server re-read Git now."""

    def reconcile() -> None:
        for app in apps:
            asyncio.run_coroutine_threadsafe(app.state.server.reconcile(), loop).result(timeout=60)

    return reconcile


async def _up(
    controller: Controller,
    endpoints: list[Endpoint],
    host: str,
    interval: float | None,
    on_ready: Callable[[list[Endpoint]], None] | None,
) -> None:
    loop = asyncio.get_running_loop()
    serving_apps = [e.app for e in endpoints if e.name.startswith("serve:")]
    controller.on_deploy.append(_reconciler(serving_apps, loop))
    servers = [_Server(_config(e.app, host, e.port)) for e in endpoints]
    failure: list[BaseException] = []

    def run_loop() -> None:
        try:
            controller.run(interval)
        except BaseException as exc:  # reported after the servers stop
            failure.append(exc)
            loop.call_soon_threadsafe(stop_servers)

    def stop_servers() -> None:
        for s in servers:
            s.should_exit = True

    def on_signal(signum: int) -> None:
        if controller.stopping.is_set():  # a second signal: stop now
            log.warning(
                "stopping now (signal %d again): killing running jobs; they are re-queued", signum
            )
            for s in servers:
                s.force_exit = True
            controller.hard_stop()
            return
        log.info(
            "stopping (signal %d): the controller finishes running jobs, servers drain", signum
        )
        controller.stop()
        stop_servers()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    thread = threading.Thread(target=run_loop, name="mw-controller")
    thread.start()
    try:
        tasks = [asyncio.ensure_future(s.serve()) for s in servers]
        while not all(s.started for s in servers) and not any(t.done() for t in tasks):
            await asyncio.sleep(0.05)
        if on_ready is not None and all(s.started for s in servers):
            on_ready(endpoints)
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        controller.stop()
        await loop.run_in_executor(None, thread.join)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if failure:
        raise failure[0]
