"""0004_tenants on a registry that already holds models and runs (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from modelworks.registry.store import (
    HEAD_REVISION,
    Store,
    _upgrade,
    current_revision,
    make_engine,
)


def _at(url: str, revision: str) -> None:
    engine = make_engine(url)
    try:
        _upgrade(engine, revision)
    finally:
        engine.dispose()


def test_upgrade_keeps_rows_and_makes_names_unique_per_tenant(registry_url: str) -> None:
    _at(registry_url, "0003_http")
    engine = make_engine(registry_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO models (id, name, tenant, labels, created_at) "
                "VALUES (1, 'churn', 'acme', '{}', CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO runs (id, model_id, fingerprint, version, status, trigger, attempts,"
                " created_at) VALUES (1, 1, 'f', 'v1', 'succeeded', 'manual', 1, CURRENT_TIMESTAMP)"
            )
        )
    engine.dispose()
    store = Store(registry_url)  # migrates to head
    try:
        assert current_revision(store.engine) == HEAD_REVISION
        with store.engine.begin() as conn:
            assert conn.execute(text("SELECT tenant FROM runs WHERE id = 1")).scalar() == "acme"
            conn.execute(
                text(
                    "INSERT INTO models (id, name, tenant, labels, created_at) "
                    "VALUES (2, 'churn', 'globex', '{}', CURRENT_TIMESTAMP)"
                )
            )
        with pytest.raises(IntegrityError), store.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO models (id, name, tenant, labels, created_at) "
                    "VALUES (3, 'churn', 'acme', '{}', CURRENT_TIMESTAMP)"
                )
            )
        columns = {c["name"] for c in inspect(store.engine).get_columns("tenants")}
        assert {"weight", "max_queued_runs", "max_artifact_bytes", "settings"} <= columns
    finally:
        store.close()
