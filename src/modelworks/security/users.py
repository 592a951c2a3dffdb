"""Users of a shared workspace: a normalised name, who added it, and whether it is disabled."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from modelworks.errors import ConfigError, ConflictError, NotFoundError
from modelworks.names import NAME_MAX, is_name, normalize
from modelworks.registry import audit
from modelworks.registry.models import User

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from modelworks.registry.store import Store


def user_name(value: str) -> str:
    """`value` normalised (NFKC, trimmed, case-folded); ConfigError unless it is a valid name."""
    name = normalize(value)
    if not is_name(name):
        raise ConfigError(
            f"user name {value!r} is not valid: use lower-case letters, digits and '.', '_' "
            f"or '-' between them (at most {NAME_MAX} characters)"
        )
    return name


def user_dict(u: User) -> dict[str, Any]:
    return {
        "name": u.name,
        "created_at": u.created_at.isoformat() if u.created_at else None,
        "created_by": u.created_by,
        "disabled": u.disabled,
    }


def add_user(store: Store, name: str, *, actor: str) -> dict[str, Any]:
    """Add a user; ConflictError when one of that (normalised) name exists."""
    name = user_name(name)
    with store.session() as s:
        if s.get(User, name) is not None:
            raise ConflictError(f"user {name!r} exists already (see `mw user list`)")
        row = User(name=name, created_by=actor, disabled=False)
        s.add(row)
        s.flush()
        result = user_dict(row)
    audit.record(store, [audit.event("user.added", f"user/{name}", actor=actor, after=result)])
    return result


def ensure_user(s: Session, name: str, actor: str) -> User:
    """The user `name` in session `s`, added when missing (used by the bootstrap)."""
    row = s.get(User, name)
    if row is None:
        row = User(name=name, created_by=actor, disabled=False)
        s.add(row)
        s.flush()
    return row


def get_user(s: Session, name: str) -> User:
    """The user `name`; NotFoundError that says how to add it."""
    row = s.get(User, name)
    if row is None:
        raise NotFoundError(f"no user {name!r}: add it first with `mw user add {name}`")
    return row


def list_users(store: Store) -> list[dict[str, Any]]:
    """All users by name."""
    with store.session() as s:
        return [user_dict(u) for u in s.scalars(select(User).order_by(User.name))]


def disable_user(store: Store, name: str, *, actor: str) -> dict[str, Any]:
    """Disable a user: their tokens stop authenticating (they are kept, not revoked)."""
    name = user_name(name)
    with store.session() as s:
        row = get_user(s, name)
        changed = not row.disabled
        row.disabled = True
        result = user_dict(row)
    if changed:
        event = audit.event("user.disabled", f"user/{name}", actor=actor, after=result)
        audit.record(store, [event])
    return result
