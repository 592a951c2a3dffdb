"""API tokens: random, shown once, stored only as a sha256 hash, with expiry and revocation.

A token is ``mw_`` + 43 url-safe characters (256 random bits). Because it is that random,
a plain sha256 is enough to store it (no salt or slow hash is needed: there is nothing to
guess), and the lookup is by that hash. The first characters are kept as the token's
``name`` so that `mw token list` can show which one is which without showing the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from modelworks.errors import AuthenticationError, ConfigError, ConflictError, NotFoundError
from modelworks.names import check_name
from modelworks.registry import audit
from modelworks.registry.models import Token, User
from modelworks.security.identity import ROLES, TOKEN_PREFIX, Identity, role_rank
from modelworks.security.users import ensure_user, get_user, user_name

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from modelworks.registry.store import Store

DEFAULT_EXPIRY = "90d"
HINT_CHARS = len(TOKEN_PREFIX) + 8
MAX_TOKEN_CHARS = 256
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION = re.compile(r"^(\d{1,6})([mhdw])$")
# last_used_at is written at most this often per token, so busy HTTP clients do not
# turn every request into a registry write.
LAST_USED_EVERY = timedelta(seconds=60)


def hash_token(secret: str) -> str:
    """The stored form of a token: sha256 hex of its text."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_expiry(value: str | None, now: datetime | None = None) -> datetime | None:
    """'30d', '12h', '90m', '2w' from now, or None for 'never'; ConfigError otherwise."""
    value = (value or DEFAULT_EXPIRY).strip().lower()
    if value == "never":
        return None
    match = _DURATION.match(value)
    if not match or int(match[1]) == 0:
        raise ConfigError(
            f"--expires {value!r} is not a duration: use a number and m, h, d or w "
            "(30d, 12h, 2w) or 'never'"
        )
    delta = timedelta(**{_UNITS[match[2]]: int(match[1])})
    if delta > timedelta(days=3650):
        raise ConfigError(f"--expires {value!r} is more than ten years; use 'never' instead")
    return (now or datetime.now(UTC)) + delta


def _aware(dt: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they were stored in UTC."""
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


def _iso(dt: datetime | None) -> str | None:
    aware = _aware(dt)
    return aware.isoformat() if aware else None


def token_state(t: Token, now: datetime | None = None) -> str:
    """'revoked', 'expired' or 'active'."""
    if t.revoked or t.revoked_at is not None:
        return "revoked"
    expires = _aware(t.expires_at)
    if expires is not None and (now or datetime.now(UTC)) >= expires:
        return "expired"
    return "active"


def token_dict(t: Token) -> dict[str, Any]:
    """A token's public fields (never the secret, never its hash)."""
    return {
        "id": t.id,
        "name": t.name,
        "user": t.user,
        "role": t.role,
        "tenant": t.tenant,
        "state": token_state(t),
        "created_at": _iso(t.created_at),
        "created_by": t.created_by,
        "expires_at": _iso(t.expires_at),
        "revoked_at": _iso(t.revoked_at),
        "last_used_at": _iso(t.last_used_at),
    }


def _new_token(
    s: Session, user: str, role: str, tenant: str, expires_at: datetime | None, actor: str
) -> tuple[str, Token]:
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = Token(
        name=secret[:HINT_CHARS],
        user=user,
        tenant=tenant,
        role=role,
        hash=hash_token(secret),
        revoked=False,
        expires_at=expires_at,
        created_by=actor,
    )
    s.add(row)
    s.flush()
    return secret, row


def create_token(
    store: Store,
    *,
    user: str,
    role: str,
    tenant: str = "default",
    expires: str | None = DEFAULT_EXPIRY,
    actor: str,
) -> dict[str, Any]:
    """A new token for an existing user; the result's `token` is the only copy of the secret."""
    name = user_name(user)
    role_rank(role)
    check_name("tenant", tenant, "--tenant")
    expires_at = parse_expiry(expires)
    with store.session() as s:
        if get_user(s, name).disabled:
            raise ConflictError(f"user {name!r} is disabled; no new tokens can be made for it")
        secret, row = _new_token(s, name, role, tenant, expires_at, actor)
        result = token_dict(row)
    _audit_created(store, result, actor, bootstrap=False)
    return {"token": secret, **result}


def bootstrap_token(
    store: Store, *, user: str, expires: str | None = DEFAULT_EXPIRY, actor: str
) -> dict[str, Any]:
    """The first admin token (adding its user); ConflictError once an active admin exists."""
    name = user_name(user)
    expires_at = parse_expiry(expires)
    with store.session() as s:
        ensure_user(s, name, actor)
        secret, row = _new_token(s, name, "admin", "default", expires_at, actor)
        # Counted after our insert, inside the same transaction: of two racing bootstraps
        # on SQLite the second waits for the first's write lock and then sees its token.
        if _active_admins(s) > 1:
            raise ConflictError(
                "an admin token exists already, so --bootstrap is refused: ask an admin to run "
                "`mw token create --user NAME --role admin` (see `mw token list`)"
            )
        result = token_dict(row)
    _audit_created(store, result, actor, bootstrap=True)
    return {"token": secret, **result}


def _active_admins(s: Session) -> int:
    now = datetime.now(UTC)
    q = (
        select(func.count())
        .select_from(Token)
        .join(User, User.name == Token.user)
        .where(
            Token.role == "admin",
            Token.revoked.is_(False),
            Token.revoked_at.is_(None),
            (Token.expires_at.is_(None)) | (Token.expires_at > now),
            User.disabled.is_(False),
        )
    )
    return int(s.scalar(q) or 0)


def _audit_created(store: Store, result: dict[str, Any], actor: str, bootstrap: bool) -> None:
    after = {k: result[k] for k in ("id", "name", "user", "role", "tenant", "expires_at")}
    after["bootstrap"] = bootstrap
    event = audit.event(
        "token.created", f"token/{result['id']}", actor=actor, tenant=result["tenant"], after=after
    )
    audit.record(store, [event])


def list_tokens(store: Store, user: str | None = None) -> list[dict[str, Any]]:
    """Every token's public fields, oldest first (optionally only one user's)."""
    with store.session() as s:
        q = select(Token).order_by(Token.id)
        if user:
            q = q.where(Token.user == user_name(user))
        return [token_dict(t) for t in s.scalars(q)]


def revoke_token(store: Store, token_id: int, *, actor: str) -> dict[str, Any]:
    """Revoke a token at once; revoking a revoked token changes nothing."""
    with store.session() as s:
        row = s.get(Token, token_id)
        if row is None:
            raise NotFoundError(f"no token with id {token_id} (see `mw token list`)")
        changed = not (row.revoked or row.revoked_at)
        if changed:
            row.revoked, row.revoked_at = True, datetime.now(UTC)
        result = token_dict(row)
    if changed:
        event = audit.event(
            "token.revoked",
            f"token/{token_id}",
            actor=actor,
            tenant=result["tenant"],
            after={"user": result["user"], "role": result["role"]},
        )
        audit.record(store, [event])
    return result


def verify_token(store: Store, secret: str) -> Identity:
    """The identity a token stands for; AuthenticationError when unknown, expired or revoked."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > MAX_TOKEN_CHARS:
        raise AuthenticationError(f"not a modelworks token (they start with {TOKEN_PREFIX})")
    digest = hash_token(secret)
    now = datetime.now(UTC)
    with store.session() as s:
        row = s.scalar(select(Token).where(Token.hash == digest))
        if row is None or not hmac.compare_digest(row.hash, digest):
            raise AuthenticationError("the token is not valid (unknown to this registry)")
        state = token_state(row, now)
        if state == "revoked":
            raise AuthenticationError(f"token {row.id} ({row.name}...) was revoked")
        if state == "expired":
            raise AuthenticationError(
                f"token {row.id} ({row.name}...) expired at {_iso(row.expires_at)}; "
                "ask an admin for a new one"
            )
        user = s.get(User, row.user)
        if user is None or user.disabled:
            raise AuthenticationError(f"user {row.user!r} of token {row.id} is disabled")
        last = _aware(row.last_used_at)
        if last is None or now - last >= LAST_USED_EVERY:
            row.last_used_at = now
        if row.role not in ROLES:
            raise AuthenticationError(f"token {row.id} has an unknown role {row.role!r}")
        return Identity(row.user, row.role, row.tenant, True, "token")
