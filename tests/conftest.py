"""Shared fixtures: real workspaces (git + SQLite), PostgreSQL databases, the slow flag."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelworks.testing import make_workspace, small_fleet
from modelworks.workspace import Workspace

PG_ADMIN_URL = os.environ.get("MW_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MW_REGISTRY_URL", "MW_EXECUTOR", "MW_WORKERS", "MW_OCI_REGISTRY", "MW_WORKSPACE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """An empty, committed workspace."""
    return make_workspace(tmp_path / "ws")


@pytest.fixture
def fleet(workspace: Workspace) -> Workspace:
    """A workspace with a tiny pipeline, two datasets and three specs, committed."""
    small_fleet(workspace)
    return workspace


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=3
        ):
            return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_server() -> str:
    if not _pg_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    return PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"mw_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield pg_server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}'"
                )
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A registry URL on each backend: SQLite in tmp, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return str(request.getfixturevalue("pg_url"))


# Ray's raylet registration wait is fixed at 30 s inside ray.init; on a loaded machine that is not
# always enough, so the shared instance gets several starts within a longer overall budget.
RAY_START_ATTEMPTS = 4


def start_local_ray(num_cpus: int, attempts: int = RAY_START_ATTEMPTS) -> None:
    """Start a local Ray instance, retrying a node that timed out during startup."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            return
        except Exception as exc:  # ray raises a bare Exception for a slow node start
            ray.shutdown()
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One local Ray instance per test process (per xdist worker), shared by every Ray test.

    Its workers cache inputs in the yielded folder (MW_RAY_CACHE is set before the start, so
    the workers inherit it).
    """
    import ray

    from modelworks.runs.ray_executor import CACHE_ENV

    cache = tmp_path_factory.mktemp("ray-cache")
    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(cache)
    start_local_ray(num_cpus=2)
    try:
        yield cache
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = old
