"""Opening the registry: engine, pragmas, Alembic migrations, sessions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from modelworks.errors import RegistryError, SettingsError

MIGRATIONS = Path(__file__).with_name("migrations")
HEAD_REVISION = "0005_deployments_model"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and its folder created."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError):
        return None


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (skipped quickly when already there)."""
    if current_revision(engine) == HEAD_REVISION:
        return
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        from filelock import FileLock

        with FileLock(f"{engine.url.database}.migrate.lock"):
            if current_revision(engine) != HEAD_REVISION:
                _upgrade(engine)
        return
    _upgrade(engine)


def _upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:
            # Batch migrations recreate tables that others reference; SQLite checks foreign
            # keys on DROP unless they are off, and the pragma only applies outside a transaction.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                if engine.dialect.name == "postgresql":
                    # Two processes migrating one database at once would race; serialize them.
                    conn.execute(text("SELECT pg_advisory_xact_lock(724511)"))
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


class Store:
    """The registry database: one engine and a session factory."""

    def __init__(self, url: str, on_append: Callable[[int, str], None] | None = None) -> None:
        self.url = url
        # Called with (seq, hash) of the newest audit row after each append (the signed anchor).
        self.on_append = on_append
        check_url(url)
        try:
            self.engine = make_engine(url)
            migrate(self.engine)
        except ImportError as exc:
            raise SettingsError(_missing_driver(url, exc)) from None
        except SQLAlchemyError as exc:
            raise RegistryError(
                f"cannot open the registry at {_safe(url)}: "
                f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}"
            ) from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on error."""
        s = self._sessions()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def close(self) -> None:
        self.engine.dispose()


BACKENDS = ("sqlite", "postgresql")
WHERE = "registry.url in modelworks.yaml or MW_REGISTRY_URL"


def check_url(url: str) -> None:
    """SettingsError unless `url` names a database the registry supports (SQLite, PostgreSQL)."""
    backend = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
    if backend not in BACKENDS:
        raise SettingsError(
            f"registry URL {_safe(url)}: unsupported database {backend or url!r}; use "
            f"sqlite:///PATH or postgresql://USER@HOST/DB ({WHERE})"
        )


def _missing_driver(url: str, exc: ImportError) -> str:
    if url.startswith("postgresql"):
        return (
            f"registry URL {_safe(url)}: PostgreSQL needs the psycopg driver, which is not "
            "installed: pip install 'modelworks[postgres]'"
        )
    return f"registry URL {_safe(url)}: its database driver is not installed ({exc})"


def _safe(url: str) -> str:
    """The URL with any password masked."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
