"""Appending to and reading the hash-chained audit log stored in the registry."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from modelworks.errors import RegistryError
from modelworks.registry.models import AuditEvent
from modelworks.registry.store import Store
from modelworks.security.audit import GENESIS, ChainProblem, chain, verify_chain

COLUMNS = (
    "seq",
    "ts",
    "actor",
    "action",
    "target",
    "tenant",
    "before",
    "after",
    "prev_hash",
    "hash",
)
# user -> how the audit log names them in this context (the CLI's local mode marks its
# users "(unauthenticated)" while Git and the registry keep the plain name).
_actor_labels: ContextVar[dict[str, str] | None] = ContextVar("mw_audit_actor_labels", default=None)


def label_actor(user: str, label: str) -> None:
    """From now on in this context, events by `user` are recorded with actor `label`."""
    _actor_labels.set({**(_actor_labels.get() or {}), user: label})


def event(
    action: str,
    target: str,
    *,
    actor: str,
    tenant: str = "default",
    before: Any = None,
    after: Any = None,
) -> dict[str, Any]:
    """One audit event: who did what to which target, with the state before and after."""
    return {
        "ts": datetime.now(UTC).isoformat(),
        "actor": (_actor_labels.get() or {}).get(actor, actor),
        "action": action,
        "target": target,
        "tenant": tenant,
        "before": before,
        "after": after,
    }


def record(store: Store, events: Sequence[Mapping[str, Any]], attempts: int = 20) -> None:
    """Append events to the chain in one transaction; concurrent writers retry."""
    if not events:
        return
    for _ in range(attempts):
        try:
            with store.session() as s:
                if s.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
                    s.execute(text("SELECT pg_advisory_xact_lock(724512)"))
                last = s.scalar(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1))
                prev, start = (last.hash, last.seq + 1) if last else (GENESIS, 1)
                rows = chain(events, prev, start)
                for row in rows:
                    s.add(AuditEvent(**{k: row.get(k) for k in COLUMNS}))
        except IntegrityError:
            continue  # another writer took the same seq; read the new tail and chain again
        _advance_anchor(store, rows[-1]["seq"], rows[-1]["hash"])
        return
    raise RegistryError("could not append to the audit log: too many concurrent writers")


def _advance_anchor(store: Store, seq: int, hash_: str) -> None:
    """Move the signed head forward; a failure leaves it behind, which verify accepts."""
    if store.on_append is None:
        return
    try:
        store.on_append(seq, hash_)
    except Exception as exc:  # the event is recorded; a stale anchor is only less evidence
        logging.getLogger(__name__).warning("audit anchor not advanced to seq %s: %s", seq, exc)


def rows(
    store: Store,
    *,
    action: str | None = None,
    actor: str | None = None,
    target: str | None = None,
    tenant: str | None = None,
    limit: int | None = None,
    tenants: frozenset[str] | None = None,
) -> list[dict[str, Any]]:
    """Stored events in seq order, optionally filtered (action may end with '*'); with
    `tenants` (the caller's visible tenants; None: all) only those tenants' events."""
    with store.session() as s:
        q = select(AuditEvent).order_by(AuditEvent.seq)
        if action:
            q = q.where(AuditEvent.action.like(action.replace("*", "%")))
        if actor:
            # local mode records "<user> (unauthenticated)": --actor alice finds both
            q = q.where(AuditEvent.actor.in_([actor, f"{actor} (unauthenticated)"]))
        if target:
            q = q.where(AuditEvent.target.like(target.replace("*", "%")))
        if tenant:
            q = q.where(AuditEvent.tenant == tenant)
        if tenants is not None:
            q = q.where(AuditEvent.tenant.in_(sorted(tenants)))
        found = [{k: getattr(e, k) for k in COLUMNS} for e in s.scalars(q)]
    return found[-limit:] if limit else found


def _decode(row: Any) -> list[Any]:
    import json

    values = list(row)
    for i in (COLUMNS.index("before"), COLUMNS.index("after")):
        if isinstance(values[i], str):
            values[i] = json.loads(values[i])
    return values


def verify(store: Store) -> list[ChainProblem]:
    """Every place where the stored chain was edited, deleted from or reordered."""
    with store.session() as s:
        # Raw SQL, not the ORM, so that values are checked exactly as stored.
        result = s.execute(text(f"SELECT {', '.join(COLUMNS)} FROM audit_events ORDER BY seq"))
        stored = [dict(zip(COLUMNS, _decode(r), strict=True)) for r in result]
    return verify_chain(stored)
