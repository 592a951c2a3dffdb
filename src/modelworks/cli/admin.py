"""Admin commands: users and API tokens (`mw user ...`, `mw token ...`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from modelworks.cli import emit_json
from modelworks.cli._common import JsonOpt, WorkspaceOpt, cli_token, identity_for

if TYPE_CHECKING:
    from pathlib import Path

    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

user_app = typer.Typer(help="Users of a shared workspace (see auth.mode).", no_args_is_help=True)
token_app = typer.Typer(
    help="API tokens: random, shown once, stored only as a hash.", no_args_is_help=True
)

UserArg = Annotated[str, typer.Argument(help="User name (normalised: lower-case, trimmed).")]


def _admin(workspace: Path | None, action: str) -> tuple[Workspace, Store, str]:
    """The workspace, its registry and the acting admin's name (every role check goes here)."""
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

    ws = Workspace.load(workspace)
    store = Store(ws.registry_url)
    who = identity_for(ws, store, cli_token(), None, "admin", action)
    return ws, store, who.user


@user_app.command("add")
def user_add_cmd(name: UserArg, workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """Add a user; give them a token with `mw token create --user NAME --role ROLE`."""
    from modelworks._console import console
    from modelworks.security.users import add_user

    _ws, store, who = _admin(workspace, "add users")
    user = add_user(store, name, actor=who)
    if json_out:
        emit_json(user)
        return
    console.print(f"Added user [bold]{user['name']}[/bold]", highlight=False)


@user_app.command("list")
def user_list_cmd(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """Users, by name."""
    from rich.table import Table

    from modelworks._console import console
    from modelworks.security.users import list_users

    _ws, store, _who = _admin(workspace, "list users")
    rows = list_users(store)
    if json_out:
        emit_json({"users": rows})
        return
    table = Table(title=f"{len(rows)} user(s)")
    for col in ("name", "created", "by", "disabled"):
        table.add_column(col)
    for u in rows:
        table.add_row(
            u["name"], (u["created_at"] or "")[:19], u["created_by"] or "-", str(u["disabled"])
        )
    console.print(table)


@user_app.command("disable")
def user_disable_cmd(
    name: UserArg, workspace: WorkspaceOpt = None, json_out: JsonOpt = False
) -> None:
    """Disable a user: none of their tokens authenticates any more."""
    from modelworks._console import console
    from modelworks.security.users import disable_user

    _ws, store, who = _admin(workspace, "disable users")
    user = disable_user(store, name, actor=who)
    if json_out:
        emit_json(user)
        return
    console.print(f"Disabled user [bold]{user['name']}[/bold]", highlight=False)


@token_app.command("create")
def token_create_cmd(
    user: Annotated[
        str | None, typer.Option("--user", help="Whose token (see mw user add).")
    ] = None,
    role: Annotated[
        str | None, typer.Option("--role", help="viewer, developer, approver or admin.")
    ] = None,
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant the role holds in.")] = "default",
    expires: Annotated[
        str | None, typer.Option("--expires", help="Lifetime: 30d, 12h, 2w or never (90d).")
    ] = None,
    bootstrap: Annotated[
        bool,
        typer.Option("--bootstrap", help="The first admin token; refused once an admin exists."),
    ] = False,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a token; it is printed once and only its hash is kept."""
    from modelworks.security.tokens import DEFAULT_EXPIRY, create_token

    if bootstrap:
        result = _bootstrap(workspace, user, role, tenant, expires or DEFAULT_EXPIRY)
    else:
        from modelworks.errors import ConfigError

        if not user or not role:
            raise ConfigError("mw token create needs --user NAME and --role ROLE (or --bootstrap)")
        _ws, store, who = _admin(workspace, "create tokens")
        result = create_token(
            store,
            user=user,
            role=role,
            tenant=tenant,
            expires=expires or DEFAULT_EXPIRY,
            actor=who,
        )
    _print_created(result, json_out)


def _bootstrap(
    workspace: Path | None, user: str | None, role: str | None, tenant: str, expires: str
) -> dict[str, Any]:
    """The first admin token, made by whoever is at the machine (audited as unauthenticated)."""
    from modelworks.errors import ConfigError
    from modelworks.names import is_name
    from modelworks.registry import audit
    from modelworks.registry.store import Store
    from modelworks.security.identity import local_identity
    from modelworks.security.tokens import bootstrap_token
    from modelworks.workspace import Workspace

    if (role or "admin") != "admin" or tenant != "default":
        raise ConfigError("--bootstrap makes an admin token for the default tenant; drop --role")
    ws = Workspace.load(workspace)
    here = local_identity(ws, None)
    audit.label_actor(here.user, here.audit_actor)
    name = user or (here.user if is_name(here.user) else "admin")
    return bootstrap_token(Store(ws.registry_url), user=name, expires=expires, actor=here.user)


def _print_created(result: dict[str, Any], json_out: bool) -> None:
    from modelworks._console import console

    if json_out:
        emit_json(result)
        return
    console.print(
        f"Created token {result['id']} for [bold]{result['user']}[/bold] "
        f"({result['role']} in {result['tenant']}, expires {result['expires_at'] or 'never'}):",
        highlight=False,
    )
    console.print(result["token"], highlight=False, soft_wrap=True, markup=False)
    console.print("It is shown only this once: keep it now (use it as MW_TOKEN or --token).")


@token_app.command("list")
def token_list_cmd(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's tokens.")] = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Tokens with their state (never the secret)."""
    from rich.table import Table

    from modelworks._console import console
    from modelworks.security.tokens import list_tokens

    _ws, store, _who = _admin(workspace, "list tokens")
    rows = list_tokens(store, user)
    if json_out:
        emit_json({"tokens": rows})
        return
    table = Table(title=f"{len(rows)} token(s)")
    for col in ("id", "prefix", "user", "role", "tenant", "state", "expires", "last used"):
        table.add_column(col)
    style = {"active": "green", "expired": "yellow", "revoked": "red"}
    for t in rows:
        table.add_row(
            str(t["id"]),
            f"{t['name']}…",
            t["user"],
            t["role"],
            t["tenant"],
            f"[{style[t['state']]}]{t['state']}[/]",
            (t["expires_at"] or "never")[:19],
            (t["last_used_at"] or "-")[:19],
        )
    console.print(table)


@token_app.command("revoke")
def token_revoke_cmd(
    token_id: Annotated[int, typer.Argument(help="Token id (see `mw token list`).")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Revoke a token: it stops authenticating at once."""
    from modelworks._console import console
    from modelworks.security.tokens import revoke_token

    _ws, store, who = _admin(workspace, "revoke tokens")
    result = revoke_token(store, token_id, actor=who)
    if json_out:
        emit_json(result)
        return
    console.print(f"Revoked token {result['id']} of {result['user']}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(user_app, name="user")
    app.add_typer(token_app, name="token")
