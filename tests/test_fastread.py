"""registry/fastread.py answers exactly as registry/queries.py (the ORM path), on SQLite and
PostgreSQL, with the same tenant filtering and the same not-found messages."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from modelworks.errors import NotFoundError
from modelworks.registry import fastread, queries
from modelworks.registry.models import Deployment, Model, ModelVersion, Run
from modelworks.registry.store import HEAD_REVISION, Store
from modelworks.testing import make_workspace, mw, mw_json

ACME, GLOBEX = frozenset({"acme"}), frozenset({"globex"})


def _seed(store: Store) -> None:
    at = datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=UTC)
    with store.session() as s:
        for k, tenant in enumerate(("acme", "globex", "default")):
            m = Model(name="churn", tenant=tenant, pipeline=f"{tenant}-pipe", labels={"k": "v"})
            s.add(m)
            s.flush()
            for i, st in enumerate(("registered", "gated", "registered")[: k + 1]):
                s.add(
                    ModelVersion(
                        model_id=m.id,
                        version=f"{tenant[:3]}{i}",
                        fingerprint=f"{tenant}{i}".ljust(64, "0"),
                        status=st,
                        reason="missed a gate" if st == "gated" else None,
                        metrics={"accuracy": 0.5 + i / 10, "f1": i},
                        gates={"min": {"accuracy": 0.6}},
                        lineage={"data_hash": "abc", "dirty": i == 1},
                        scan={"safe": i != 2} if i else None,
                        signed=bool(i % 2),
                        artifact_digest=f"sha256:{i}" if st == "registered" else None,
                        oci_layout=None,
                        artifact_ref=f"{tenant}-{i}",
                        created_at=at.replace(second=i),
                    )
                )
            for env, version in (("test", "a"), ("prod", "b"), ("test", "c")):
                s.add(Deployment(model_id=m.id, env=env, version=version, commit="c0ffee"))
            s.add(Run(model_id=m.id, tenant=tenant, fingerprint="f" * 64, version="r1"))
            s.add(
                Run(
                    model_id=m.id,
                    tenant=tenant,
                    fingerprint="f" * 64,
                    version="r2",
                    status="failed",
                    error="boom",
                    created_at=at.replace(microsecond=0),
                )
            )
        s.add(Model(name="lonely", tenant="acme", pipeline=None, labels={}))


@pytest.fixture
def store(registry_url: str) -> Store:
    store = Store(registry_url)
    _seed(store)
    return store


def _readers(store: Store) -> list[fastread.Reader]:
    found = [fastread.for_store(store)]
    direct = fastread.open_sqlite(store.url)
    if store.url.startswith("sqlite"):
        assert direct is not None  # a healthy SQLite file is read without the Store
        found.append(direct)
    else:
        assert direct is None
    return found


@pytest.mark.parametrize("tenants", [None, ACME, GLOBEX, frozenset({"acme", "default"})])
def test_status_equals_the_orm_path(store: Store, tenants: frozenset[str] | None) -> None:
    expected = queries.status(store, tenants)
    assert expected  # the comparison below is of something
    for reader in _readers(store):
        assert fastread.status(reader, tenants) == expected


@pytest.mark.parametrize(
    ("ref", "tenants"),
    [
        ("acme/churn", None),
        ("globex/churn", GLOBEX),
        ("churn", ACME),
        ("churn", None),  # the default tenant's
        ("lonely", None),
        ("acme/lonely", ACME),
    ],
)
def test_show_equals_the_orm_path(store: Store, ref: str, tenants: frozenset[str] | None) -> None:
    expected = queries.show(store, ref, tenants)
    for reader in _readers(store):
        assert fastread.show(reader, ref, tenants) == expected


@pytest.mark.parametrize(("ref", "tenants"), [("globex/churn", ACME), ("lonly", None)])
def test_show_not_found_says_what_the_orm_path_says(
    store: Store, ref: str, tenants: frozenset[str] | None
) -> None:
    with pytest.raises(NotFoundError) as orm:
        queries.show(store, ref, tenants)
    for reader in _readers(store):
        with pytest.raises(NotFoundError) as fast:
            fastread.show(reader, ref, tenants)
        assert str(fast.value) == str(orm.value)


def test_head_revision_is_the_stores() -> None:
    assert fastread.HEAD_REVISION == HEAD_REVISION


def test_only_a_healthy_sqlite_file_opens_directly(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    url = f"sqlite:///{db}"
    assert fastread.open_sqlite(url) is None  # missing: the guard decides
    db.write_bytes(b"")
    assert fastread.open_sqlite(url) is None  # 0 bytes: the guard decides
    db.unlink()
    Store(url).close()
    assert fastread.open_sqlite(url) is None  # no version yet: the guard decides
    store = Store(url)
    _seed(store)
    store.close()
    reader = fastread.open_sqlite(url)
    assert reader is not None
    reader.close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0003_old'")
    assert fastread.open_sqlite(url) is None  # an older schema: the Store migrates it
    assert fastread.open_sqlite("sqlite:///:memory:") is None
    assert fastread.open_sqlite("postgresql://u@h/db") is None


def test_mw_status_and_show_json_are_the_orm_answers(tmp_path: Path, capsys: Any) -> None:
    ws = make_workspace(tmp_path / "ws")
    store = Store(ws.registry_url)
    _seed(store)
    assert fastread.open_sqlite(ws.registry_url) is not None  # the CLI takes the lean read
    assert mw_json(capsys, ws, "status") == {"models": queries.status(store)}
    assert mw_json(capsys, ws, "show", "acme/churn") == queries.show(store, "acme/churn")
    code, _out, err = mw(capsys, ws, "show", "initech/churn")
    with pytest.raises(NotFoundError) as orm:
        queries.show(store, "initech/churn")
    assert code != 0
    assert err.strip() == f"error: {orm.value}"
