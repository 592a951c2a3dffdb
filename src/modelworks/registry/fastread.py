"""Lean reads behind `mw status` and `mw show`: plain SQL, no ORM objects.

A fresh `mw status` used to spend most of its time importing SQLAlchemy's ORM and building
9,000 mapped objects. Here a SQLite registry is read with the stdlib sqlite3 module (nothing
else imported) and PostgreSQL runs the very same SQL through SQLAlchemy Core on the store's
engine. Rows decode to exactly what registry/queries.py returns (tests compare both paths on
both backends); `tenants` filters the same way (None: all).

`open_sqlite` only opens a registry that needs nothing from the full path: an SQLite file at
the newest schema revision with at least one version. Anything else (missing, empty, older
schema) returns None, and the caller opens the Store, whose guard and migrations decide.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from modelworks.errors import NotFoundError, did_you_mean
from modelworks.tenancy.access import DEFAULT_TENANT
from modelworks.tenancy.names import model_key, qualified, resolve_ref, split_ref

if TYPE_CHECKING:
    from modelworks.registry.store import Store

# registry/store.py's HEAD_REVISION (a test keeps the two equal; importing it means SQLAlchemy).
HEAD_REVISION = "0005_deployments_model"

Rows = Callable[[str, dict[str, Any]], list[tuple[Any, ...]]]


class Reader:
    """Runs read-only SQL (`:name` parameters) on the registry and returns tuples."""

    def __init__(self, rows: Rows, close: Callable[[], None] = lambda: None) -> None:
        self.rows = rows
        self.close = close


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite:///PATH` URL (None for anything else or in-memory)."""
    if not url.startswith("sqlite") or "///" not in url:
        return None
    path = url.split("///", 1)[-1]
    if not path or path == ":memory:" or "?" in path:
        return None
    return Path(path)


def open_sqlite(url: str) -> Reader | None:
    """A Reader on a healthy SQLite registry file, or None (see the module docstring)."""
    path = sqlite_file(url)
    if path is None or not path.is_file() or path.stat().st_size == 0:
        return None
    conn = sqlite3.connect(path, timeout=60)
    try:
        conn.execute("PRAGMA busy_timeout=60000")
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone() or (None,)
        has_version = conn.execute("SELECT 1 FROM model_versions LIMIT 1").fetchone()
    except sqlite3.Error:
        conn.close()
        return None
    if revision != HEAD_REVISION or has_version is None:
        conn.close()
        return None

    def rows(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with closing(conn.execute(sql, params)) as cur:
            return cur.fetchall()

    return Reader(rows, conn.close)


def for_store(store: Store, owned: bool = True) -> Reader:
    """A Reader running the same SQL through SQLAlchemy Core on `store`'s engine (closing the
    Reader closes the store when `owned`)."""
    from sqlalchemy import text

    def rows(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with store.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]

    return Reader(rows, store.close if owned else lambda: None)


@contextmanager
def reading(reader: Reader) -> Iterator[Reader]:
    """`reader`, closed afterwards."""
    try:
        yield reader
    finally:
        reader.close()


# -- decoding: what the ORM's column types would have returned --------------------------


def decode_json(value: Any) -> Any:
    """A JSON column's value (SQLite returns its text, PostgreSQL the decoded value)."""
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _json_all(values: list[Any]) -> list[Any]:
    """`decode_json` of each value, the texts decoded in one call (9,000 calls cost more than
    the parsing). A JSON column holds what json.dumps wrote, one document per row."""
    if all(isinstance(v, str) for v in values):
        try:
            decoded: list[Any] = json.loads("[" + ",".join(values) + "]")
        except ValueError:
            pass  # one bad row: decode each, so the error is that row's own
        else:
            if len(decoded) == len(values):
                return decoded
    return [decode_json(v) for v in values]


def _iso(value: Any) -> str | None:
    """ISO text of a DateTime column: SQLite keeps 'YYYY-MM-DD HH:MM:SS.ffffff' text."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return str(value.isoformat())


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def in_list(column: str, values: Sequence[str], prefix: str) -> tuple[str, dict[str, Any]]:
    """`column IN (:p0, :p1, ...)` and its parameters."""
    params = {f"{prefix}{i}": v for i, v in enumerate(values)}
    return f"{column} IN ({', '.join(':' + k for k in params)})", params


def _tenant_filter(tenants: frozenset[str] | None, column: str) -> tuple[str, dict[str, Any]]:
    if tenants is None:
        return "", {}
    clause, params = in_list(column, sorted(tenants), "t")
    return f" WHERE {clause}", params


# -- mw status -------------------------------------------------------------------------


def status(reader: Reader, tenants: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """queries.status: one row per model of the `tenants` (None: all), in name order."""
    where, params = _tenant_filter(tenants, "tenant")
    models = reader.rows(
        f"SELECT id, tenant, name, pipeline FROM models{where} ORDER BY name", params
    )
    latest = reader.rows(
        "SELECT model_id, version, status, metrics FROM model_versions WHERE id IN "
        "(SELECT max(id) FROM model_versions GROUP BY model_id)",
        {},
    )
    metrics = _json_all([m for *_, m in latest])
    versions = {v[0]: (v[1], v[2], m) for v, m in zip(latest, metrics, strict=True)}
    deployed: dict[int, dict[str, str]] = {}
    for mid, env, version in reader.rows(
        "SELECT model_id, env, version FROM deployments WHERE id IN "
        "(SELECT max(id) FROM deployments GROUP BY model_id, env) ORDER BY id",
        {},
    ):
        deployed.setdefault(mid, {})[env] = version
    runs = {
        mid: {"id": rid, "status": st, "error": err}
        for mid, rid, st, err in reader.rows(
            "SELECT model_id, id, status, error FROM runs WHERE id IN "
            "(SELECT max(id) FROM runs GROUP BY model_id)",
            {},
        )
    }
    rows = []
    for mid, tenant, name, pipeline in models:
        v = versions.get(mid)
        rows.append(
            {
                "name": qualified(tenant, name),
                "tenant": tenant,
                "pipeline": pipeline,
                "version": v[0] if v else None,
                "status": v[1] if v else None,
                "metrics": v[2] if v else {},
                "deployed": deployed.get(mid, {}),
                "last_run": runs.get(mid),
            }
        )
    return rows


# -- mw show ---------------------------------------------------------------------------

VERSION_COLUMNS = (
    "version, fingerprint, status, reason, metrics, gates, lineage, scan, signed, created_at, "
    "oci_layout, artifact_ref, artifact_digest, pushed_uri"
)


def _version(row: tuple[Any, ...]) -> dict[str, Any]:
    """queries.version_dict of one VERSION_COLUMNS row."""
    (version, fp, st, reason, metrics, gates, lineage, scan, signed, created) = row[:10]
    layout, ref, digest, pushed = row[10:]
    return {
        "version": version,
        "fingerprint": fp,
        "status": st,
        "reason": reason,
        "metrics": decode_json(metrics),
        "gates": decode_json(gates),
        "lineage": decode_json(lineage),
        "scan": decode_json(scan),
        "signed": _bool(signed),
        "created_at": _iso(created),
        "artifact": {"oci_layout": layout, "ref": ref, "digest": digest, "pushed_uri": pushed},
    }


def find_model(reader: Reader, ref: str, tenants: frozenset[str] | None = None) -> tuple[Any, ...]:
    """queries.get_model: the (id, tenant, name, pipeline, spec_path, labels) row `ref` names
    among the `tenants`' models; another tenant's model is not found, as a missing one."""
    _tenant, name = split_ref(ref)
    where, params = _tenant_filter(tenants, "tenant")
    where = f"{where} AND name = :name" if where else " WHERE name = :name"
    found = reader.rows(
        f"SELECT id, tenant, name, pipeline, spec_path, labels FROM models{where}",
        {**params, "name": name},
    )
    rows = {(r[1] or DEFAULT_TENANT, r[2]): r for r in found}
    if not rows:
        where, params = _tenant_filter(tenants, "tenant")
        names = reader.rows(f"SELECT tenant, name FROM models{where}", params)
        shown = [qualified(t, n) for t, n in names]
        raise NotFoundError(f"no model named {ref!r} in the registry.{did_you_mean(ref, shown)}")
    return rows[model_key(resolve_ref(ref, rows))]


def show(reader: Reader, ref: str, tenants: frozenset[str] | None = None) -> dict[str, Any]:
    """queries.show: everything the registry knows about one model of the `tenants`."""
    mid, tenant, name, pipeline, spec_path, labels = find_model(reader, ref, tenants)
    versions = reader.rows(
        f"SELECT {VERSION_COLUMNS} FROM model_versions WHERE model_id = :m ORDER BY id DESC",
        {"m": mid},
    )
    current: dict[str, dict[str, Any]] = {}
    for env, version, commit, kind, actor, at in reader.rows(
        'SELECT env, version, "commit", kind, actor, created_at FROM deployments '
        "WHERE model_id = :m ORDER BY id DESC",
        {"m": mid},
    ):
        deployment = {"version": version, "commit": commit, "kind": kind, "actor": actor}
        current.setdefault(env, {**deployment, "at": _iso(at)})
    decoded = [_version(v) for v in versions]
    latest_ok = next((v for v in decoded if v["status"] == "registered"), None)
    return {
        "name": qualified(tenant, name),
        "tenant": tenant,
        "pipeline": pipeline,
        "spec_path": spec_path,
        "labels": decode_json(labels),
        "artifact": _artifact(latest_ok),
        "sbom": _sbom(latest_ok),
        "latest": decoded[0] if decoded else None,
        "versions": decoded,
        "deployments": current,
    }


def _artifact(v: dict[str, Any] | None) -> dict[str, Any] | None:
    if v is None:
        return None
    a = v["artifact"]
    return {
        "oci_layout": a["oci_layout"],
        "ref": a["ref"],
        "digest": a["digest"],
        "version": v["version"],
        "skopeo": f"oci:{a['oci_layout']}:{a['ref']}",
        "pushed_uri": a["pushed_uri"],
        "signed": v["signed"],
        "scan": scan_status(v["scan"]),
    }


def scan_status(scan: Any) -> str:
    """'safe', 'unsafe' or 'unknown' (a missing or unrecognised scan result)."""
    if isinstance(scan, dict) and isinstance(scan.get("safe"), bool):
        return "safe" if scan["safe"] else "unsafe"
    return "unknown"


def _sbom(v: dict[str, Any] | None) -> dict[str, Any] | None:
    """Summary of the artifact's sbom.json (format, spec, components, key packages)."""
    if v is None:
        return None
    layout, digest = v["artifact"]["oci_layout"], v["artifact"]["digest"]
    if not digest or not layout:
        return None
    from modelworks.artifacts.sbom import artifact_sbom

    return {"version": v["version"], **artifact_sbom(layout, layout_repo(layout), digest)}


def layout_repo(layout: str) -> str:
    """The OCI repository a `<store>/repos/<repo>` layout folder holds (`acme/churn`)."""
    parts = PurePath(layout).parts
    at = len(parts) - 1 - parts[::-1].index("repos") if "repos" in parts else len(parts) - 2
    return "/".join(parts[at + 1 :])
