"""OIDC: a JWT from Keycloak, Dex or any provider, verified with PyJWT and mapped to a role.

The signature is checked against the provider's JWKS (fetched from `jwks_url` and cached,
or read from `jwks_file`), and so are `exp`, `aud` and `iss`; only RS256 and ES256 are
accepted. The roles claim (a list, or a space-separated string) is mapped to the highest
of our ROLES it names, bare (``approver``) or for the default tenant (``default:approver``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt

from modelworks.errors import AuthenticationError, PermissionDeniedError
from modelworks.names import normalize
from modelworks.security.identity import ROLES, Identity

if TYPE_CHECKING:
    from modelworks.workspace import OIDCSettings

ALGORITHMS = ["RS256", "ES256"]
TENANT = "default"
JWKS_TIMEOUT = 10.0
LEEWAY = 30  # seconds of clock skew allowed on exp/nbf/iat
_clients: dict[str, jwt.PyJWKClient] = {}
_clients_lock = threading.Lock()


def _client(url: str) -> jwt.PyJWKClient:
    """One cached client per JWKS URL, so keys are fetched once per lifespan, not per call."""
    with _clients_lock:
        if url not in _clients:
            _clients[url] = jwt.PyJWKClient(url, cache_keys=True, timeout=JWKS_TIMEOUT)
        return _clients[url]


def _file_key(path: Path, token: str) -> Any:
    try:
        jwks = jwt.PyJWKSet.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, jwt.PyJWTError) as exc:
        raise AuthenticationError(f"cannot read the JWKS file {path}: {exc}") from None
    kid = jwt.get_unverified_header(token).get("kid")
    keys = [k for k in jwks.keys if kid is None or k.key_id == kid]
    if kid is None and len(keys) != 1:
        raise AuthenticationError(f"the JWT names no key id (kid) and {path} has {len(keys)} keys")
    if not keys:
        raise AuthenticationError(f"the JWT's key id {kid!r} is not in {path}")
    return keys[0].key


def signing_key(settings: OIDCSettings, token: str, root: Path | None = None) -> Any:
    """The provider's public key that `token` says it was signed with."""
    try:
        if settings.jwks_url:
            return _client(settings.jwks_url).get_signing_key_from_jwt(token).key
        path = Path(settings.jwks_file or "")
        return _file_key(path if path.is_absolute() or root is None else root / path, token)
    except jwt.PyJWKClientError as exc:
        raise AuthenticationError(
            f"cannot get the signing key from {settings.jwks_url}: {exc}"
        ) from None
    except jwt.PyJWTError as exc:
        raise AuthenticationError(f"the JWT is malformed: {exc}") from None


def claim(claims: dict[str, Any], path: str) -> Any:
    """The claim at a dotted path (realm_access.roles), or None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def role_of(value: Any) -> str | None:
    """The highest of ROLES named in a roles claim, bare or as 'default:role'."""
    names = value.split() if isinstance(value, str) else value
    if not isinstance(names, list):
        return None
    found = set()
    for name in names:
        if not isinstance(name, str):
            continue
        tenant, _, role = normalize(name).rpartition(":")
        if tenant in ("", TENANT) and role in ROLES:
            found.add(role)
    return max(found, key=ROLES.index) if found else None


def verify_jwt(settings: OIDCSettings, token: str, root: Path | None = None) -> Identity:
    """The identity of a verified JWT; AuthenticationError (401) for any failed check."""
    key = signing_key(settings, token, root)
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=ALGORITHMS,
            audience=settings.audience,
            issuer=settings.issuer,
            leeway=LEEWAY,
            options={"require": ["exp", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthenticationError("the JWT has expired; sign in again") from None
    except jwt.PyJWTError as exc:
        raise AuthenticationError(f"the JWT is not valid: {exc}") from None
    raw = claim(claims, settings.user_claim) or claims.get("sub")
    user = normalize(raw) if isinstance(raw, str) else ""
    if not user or len(user) > 255 or not user.isprintable():
        raise AuthenticationError(
            f"the JWT names no usable user in '{settings.user_claim}' or 'sub'"
        )
    role = role_of(claim(claims, settings.roles_claim))
    if role is None:
        raise PermissionDeniedError(
            f"{user} has none of the roles {', '.join(ROLES)} in the JWT claim "
            f"'{settings.roles_claim}'"
        )
    return Identity(user, role, TENANT, True, "oidc")
