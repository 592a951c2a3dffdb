"""Options and helpers shared by the command modules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from modelworks.registry.fastread import Reader
    from modelworks.registry.store import Store
    from modelworks.remote import Client
    from modelworks.security.identity import Identity
    from modelworks.workspace import Workspace

WorkspaceOpt = Annotated[
    Path | None,
    typer.Option(
        "--workspace", "-C", envvar="MW_WORKSPACE", help="Workspace folder (default: here)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ActorOpt = Annotated[
    str | None,
    typer.Option("--as", help="Act as this user (auth.mode local only; default: the git user)."),
]


def open_workspace(path: Path | None, role: str = "viewer") -> tuple[Workspace, Store]:
    """The workspace at or above `path` and its registry (in token mode: for `role` or up).

    A registry that is missing, 0 bytes or without versions in a workspace with deployments or
    images was lost: refused (registry/fsck.py guard) rather than silently recreated empty.
    """
    ws, store, _tenants = open_scoped(path, role)
    return ws, store


def open_scoped(
    path: Path | None, role: str = "viewer"
) -> tuple[Workspace, Store, frozenset[str] | None]:
    """`open_workspace`, plus the tenants the caller may see (None: all): a token's tenant,
    or every tenant for a platform admin and local mode's user (see tenancy.access)."""
    from modelworks.workspace import Workspace

    return _scoped(Workspace.load(path), role)


def _scoped(ws: Workspace, role: str) -> tuple[Workspace, Store, frozenset[str] | None]:
    from modelworks.registry.fsck import guard
    from modelworks.security.anchor import open_store

    guard(ws)
    store = open_store(ws)
    guard(ws, store)
    if ws.settings.auth.mode == "token":
        from modelworks.tenancy.access import visible_tenants

        who = identity_for(ws, store, cli_token(), None, role, "read this workspace")
        return ws, store, visible_tenants(who)
    return ws, store, None


def open_reader(
    path: Path | None, role: str = "viewer"
) -> tuple[Workspace, Reader, frozenset[str] | None]:
    """`open_scoped` for the read paths: a lean registry Reader (registry/fastread.py).

    Local mode's healthy SQLite registry is read with sqlite3 alone (no Store, no ORM); in
    token mode, or when the registry needs the guard or a migration, the Store is opened
    as `open_scoped` does and the same tenants filter the reads.
    """
    from modelworks.registry import fastread
    from modelworks.workspace import Workspace

    ws = Workspace.load(path)
    if ws.settings.auth.mode != "token":
        reader = fastread.open_sqlite(ws.registry_url)
        if reader is not None:
            return ws, reader, None
    ws, store, tenants = _scoped(ws, role)
    return ws, fastread.for_store(store), tenants


def open_plan_reader(path: Path | None) -> tuple[Workspace, Reader] | None:
    """The workspace and a lean Reader for `mw plan` when nothing needs the Store: local
    mode, no tenants (declared or API-created), a healthy SQLite registry. Else None."""
    from modelworks.registry import fastread
    from modelworks.workspace import Workspace

    ws = Workspace.load(path)
    if ws.settings.auth.mode == "token" or ws.settings.tenants:
        return None
    reader = fastread.open_sqlite(ws.registry_url)
    if reader is None:
        return None
    if reader.rows("SELECT 1 FROM tenants WHERE settings IS NOT NULL LIMIT 1", {}):
        reader.close()
        return None
    return ws, reader


def remote_client(as_user: str | None = None) -> Client | None:
    """cli._remote.remote(), without importing the HTTP client when MW_SERVER is unset."""
    if not os.environ.get("MW_SERVER", "").strip():
        return None
    from modelworks.cli._remote import remote

    return remote(as_user)


def cli_token() -> str | None:
    """The token of this command: MW_TOKEN (main() moves a global --token there)."""
    return os.environ.get("MW_TOKEN") or None


def identity_for(
    ws: Workspace,
    store: Store | None,
    token: str | None,
    as_user: str | None,
    role: str,
    action: str,
) -> Identity:
    """Who runs this command, checked for `role`; the one place CLI commands check roles.

    Local mode's users (the git user or --as) hold every role but are audited as
    "<user> (unauthenticated)".
    """
    from modelworks.registry import audit
    from modelworks.security.identity import cli_identity, require

    identity = cli_identity(ws, store, token=token, as_user=as_user)
    require(identity, role, action)
    if not identity.authenticated:
        audit.label_actor(identity.user, identity.audit_actor)
    return identity


def actor(
    ws: Workspace, given: str | None, role: str = "developer", action: str = "change state"
) -> str:
    """The user a state-changing command acts as (see identity_for)."""
    return identity_for(ws, None, cli_token(), given, role, action).user


def acting(
    ws: Workspace, store: Store | None, given: str | None, role: str, action: str
) -> tuple[str, frozenset[str] | None]:
    """The user a command acts as (see identity_for) and the tenants they may act on."""
    from modelworks.tenancy.access import visible_tenants

    identity = identity_for(ws, store, cli_token(), given, role, action)
    return identity.user, visible_tenants(identity)
