"""Who is acting: an Identity from a token, an OIDC JWT or (local mode) the git user.

Roles are ordered, each including the ones before it:

    viewer < developer < approver < admin

`cli_identity` answers for the command line, `authenticate_bearer` for HTTP, and
`require` checks a role. In `auth.mode: local` (a single-user laptop) the identity is the
git user or `--as NAME`, unauthenticated and audited as such; in `auth.mode: token` it
comes only from a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelworks.errors import AuthenticationError, ConfigError, PermissionDeniedError
from modelworks.names import NAME_MAX, is_name, normalize

if TYPE_CHECKING:
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

ROLES = ("viewer", "developer", "approver", "admin")
TOKEN_PREFIX = "mw_"


@dataclass(frozen=True)
class Identity:
    """A user with one role in one tenant, and how we know who they are."""

    user: str
    role: str
    tenant: str
    authenticated: bool
    via: str  # "token" | "oidc" | "local"

    def has(self, role: str) -> bool:
        """True when this identity's role is `role` or a higher one."""
        return ROLES.index(self.role) >= role_rank(role)

    def require(self, role: str, action: str) -> None:
        """PermissionDeniedError unless this identity holds `role` (see `require`)."""
        require(self, role, action)

    @property
    def audit_actor(self) -> str:
        """The actor written to the audit log: local identities are marked unauthenticated."""
        return self.user if self.authenticated else f"{self.user} (unauthenticated)"


def role_rank(role: str) -> int:
    """The position of `role` in ROLES; ConfigError naming the roles when it is unknown."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    return ROLES.index(role)


def require(identity: Identity, role: str, action: str) -> None:
    """Raise PermissionDeniedError unless `identity` holds `role` (or a higher one)."""
    if identity.has(role):
        return
    raise PermissionDeniedError(
        f"{identity.user} has the {identity.role} role (via {identity.via}) and cannot "
        f"{action}: that needs {role} or higher; ask an admin for a token with --role {role}"
    )


def local_identity(ws: Workspace, as_user: str | None) -> Identity:
    """Local mode: `--as NAME` (normalised, a valid name) or else the git user name."""
    from modelworks import _git

    if as_user is None:
        # A git user name is free text ("Jane Doe"); it is normalised, not refused.
        name = normalize(_git.user_name(ws.root))[:NAME_MAX] or "unknown"
    else:
        name = normalize(as_user)
        if not is_name(name):
            raise ConfigError(
                f"--as {as_user!r} is not a valid user name: use lower-case letters, digits "
                "and '.', '_' or '-' between them (leave --as out to act as the git user)"
            )
    return Identity(name, "admin", "default", False, "local")


def cli_identity(
    ws: Workspace, store: Store | None, *, token: str | None, as_user: str | None
) -> Identity:
    """The identity of a command: its token (MW_TOKEN/--token), else local mode's user."""
    token = token.strip() if token else None
    mode = ws.settings.auth.mode
    if token:
        if as_user is not None:
            raise ConfigError(
                "--as cannot be combined with a token (MW_TOKEN or --token): "
                "the token already names the user; drop --as"
            )
        return identify_secret(ws, store, token)
    if mode == "token":
        if as_user is not None:
            raise ConfigError(
                "--as is not allowed when auth.mode is 'token' in modelworks.yaml: "
                "act as yourself with your own token (MW_TOKEN or --token)"
            )
        raise AuthenticationError(
            "auth.mode is 'token' in modelworks.yaml: pass a token with MW_TOKEN=<token> "
            "or --token <token> (an admin creates one with `mw token create`)"
        )
    return local_identity(ws, as_user)


def authenticate_bearer(ws: Workspace, store: Store | None, authorization: str | None) -> Identity:
    """The identity of an HTTP request's `Authorization: Bearer <token>` header."""
    if not authorization or not authorization.strip():
        raise AuthenticationError(
            "missing Authorization header: send 'Authorization: Bearer <token>'"
        )
    scheme, _, secret = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise AuthenticationError("the Authorization header must be 'Bearer <token>'")
    return identify_secret(ws, store, secret.strip())


def identify_secret(ws: Workspace, store: Store | None, secret: str) -> Identity:
    """A modelworks token (mw_...) checked against the registry, or an OIDC JWT."""
    if secret.startswith(TOKEN_PREFIX):
        from modelworks.registry.store import Store
        from modelworks.security.tokens import verify_token

        return verify_token(store or Store(ws.registry_url), secret)
    oidc = ws.settings.auth.oidc
    if oidc is None:
        raise AuthenticationError(
            f"the token is not a modelworks token ({TOKEN_PREFIX}...) and auth.oidc is not "
            "configured in modelworks.yaml"
        )
    from modelworks.security.oidc import verify_jwt

    return verify_jwt(oidc, secret, root=ws.root)
