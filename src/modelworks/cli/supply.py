"""Supply-chain commands: verify, audit, audit verify, keys, secret seal and secret list."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from modelworks.cli import emit_json
from modelworks.cli._common import (
    ActorOpt,
    JsonOpt,
    WorkspaceOpt,
    actor,
    open_scoped,
    open_workspace,
)

audit_app = typer.Typer(help="List and verify the hash-chained audit log.")
keys_app = typer.Typer(
    help="The workspace signing keys: rotate, list, revoke.", no_args_is_help=True
)
secret_app = typer.Typer(
    help="Sealed secrets: encrypted to the workspace key, safe to commit.", no_args_is_help=True
)


def verify_cmd(
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="[MODEL[@VERSION]]",
            help="Model, optionally @version or @sha256:digest (omit with --env: every config).",
        ),
    ] = None,
    env: Annotated[
        str | None,
        typer.Option(
            "--env",
            "-e",
            help="Without MODEL: check every config of this env (approval and artifact); "
            "with MODEL and no @VERSION: the version served in this env.",
        ),
    ] = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Verify a version before anything loads it: digests, signature, metrics, SBOM, scan."""
    from modelworks._console import console
    from modelworks.artifacts.verify import verify_version
    from modelworks.errors import ConfigError

    if target is None:
        if env is None:
            raise ConfigError("name a model to verify (MODEL or MODEL@VERSION), or pass --env ENV")
        _verify_env(env, workspace, json_out)
        return
    model, _, version = target.partition("@")
    ws, store = open_workspace(workspace)
    info = verify_version(ws, store, model, version or None, env=env)
    if json_out:
        emit_json(info)
        return
    c = info["checks"]
    sig, sbom = c["signature"], c["sbom"]
    retired = " (a retired key)" if sig["retired"] else ""
    console.print(
        f"[green]verified[/green] [bold]{info['model']}@{info['version']}[/bold] {info['digest']}",
        highlight=False,
    )
    console.print(
        f"  digests    {c['digests']['blobs']} blobs re-hashed; annotations match", highlight=False
    )
    console.print(
        f"  signature  {len(c['files'])} files, key {sig['key']}{retired} "
        f"{sig['fingerprint'][:19]}",
        highlight=False,
    )
    console.print(
        f"  metrics    {c['metrics']['signed']} signed metrics"
        + ("; the registry matches" if c["metrics"].get("registry_matches") else ""),
        highlight=False,
    )
    console.print(
        f"  sbom       {sbom['format']} {sbom['spec_version']}, {sbom['components']} components",
        highlight=False,
    )
    console.print(f"  scan       safe at threshold {c['scan']['threshold']}", highlight=False)
    for env, d in sorted(info["deployed"].items()):
        console.print(f"  {env:<10} serves {d['version']}", highlight=False)


def _verify_env(env: str, workspace: Any, json_out: bool) -> None:
    from modelworks._console import console
    from modelworks.errors import VerificationError
    from modelworks.gitops.attest import verify_env

    ws, store = open_workspace(workspace)
    info = verify_env(ws, store, env)
    bad = [m for m in info["models"] if not m["ok"]]
    if json_out:
        emit_json(info)
        if bad:
            raise typer.Exit(1)
        return
    for m in info["models"]:
        mark = "[green]ok[/green]     " if m["ok"] else "[red]refused[/red]"
        console.print(f"  {mark} {m['path']}  {m['version'] or ''}", highlight=False)
        if not m["ok"]:
            console.print(f"           {m['problem']}", highlight=False, soft_wrap=True)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise VerificationError(f"{bad[0]['problem']}{more}")
    gate = "approved and " if info["gated"] else ""
    console.print(
        f"[green]verified[/green] {len(info['models'])} config(s) of {env} at "
        f"{info['commit'][:12]}: {gate}artifacts intact",
        highlight=False,
    )


@audit_app.callback(invoke_without_command=True)
def audit_cmd(
    ctx: typer.Context,
    action: Annotated[
        str | None, typer.Option("--action", help="Only this action ('version.*' ok).")
    ] = None,
    actor_: Annotated[str | None, typer.Option("--actor", help="Only events by this user.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Only events on this model.")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant.")] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", help="Only the last N events.")
    ] = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List audit events, oldest first: who did what, when, before and after."""
    if ctx.invoked_subcommand is not None:  # `mw audit -C ws --json verify` means what it says
        ctx.obj = {"workspace": workspace, "json": json_out}
        return
    from modelworks.cli._remote import path, remote

    if (api := remote()) is not None:
        query = {"action": action, "actor": actor_, "model": model, "tenant": tenant}
        # the server's own default is its last 1000 events; locally it is all of them
        events = api.get(path("audit"), {**query, "limit": limit or 10_000})["events"]
    else:
        from modelworks.registry.audit import rows

        _ws, store, tenants = open_scoped(workspace)
        events = rows(
            store,
            action=action,
            actor=actor_,
            target=model,
            tenant=tenant,
            limit=limit,
            tenants=tenants,
        )
    if json_out:
        emit_json({"events": events})
        return
    _print_events(events)


def _print_events(events: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from modelworks._console import console

    table = Table(title=f"{len(events)} audit events")
    tenants = any((e["tenant"] or "default") != "default" for e in events)
    cols = ["seq", "when (UTC)", "actor", "action", "target"] + (["tenant"] if tenants else [])
    for col in cols:
        table.add_column(col, no_wrap=col in ("seq", "when (UTC)", "action"))
    table.add_column("change", overflow="fold", ratio=2)
    for e in events:
        when = str(e["ts"])[:19].replace("T", " ")
        cells = [str(e["seq"]), when, e["actor"], e["action"], e["target"]]
        cells += [e["tenant"] or ""] if tenants else []
        table.add_row(*cells, _change(e["before"], e["after"]))
    console.print(table)


def _change(before: Any, after: Any) -> str:
    """What changed, compactly: 'version: - -> 48e48c0016, commit=916760e7ab'."""
    b = before if isinstance(before, dict) else {}
    a = after if isinstance(after, dict) else {}
    if not isinstance(after, dict) and after is not None:
        return f"{_short(before)} -> {_short(after)}" if before is not None else _short(after)
    parts = []
    for key in [*a, *(k for k in b if k not in a)]:
        if key == "metrics" or b.get(key) == a.get(key):
            continue
        if key in b:
            parts.append(f"{key}: {_short(b[key])} -> {_short(a.get(key))}")
        elif a[key] is not None:
            parts.append(f"{key}={_short(a[key])}")
    return ", ".join(parts)


def _short(value: Any) -> str:
    text = "-" if value is None else str(value)
    if len(text) >= 40 and all(c in "0123456789abcdef:sha" for c in text):
        return text.removeprefix("sha256:")[:10]
    return text if len(text) <= 60 else text[:57] + "..."


@audit_app.command("verify")
def audit_verify_cmd(
    ctx: typer.Context,
    accept_head: Annotated[
        bool,
        typer.Option(
            "--accept-head",
            help="Anchor the current head although the anchors object (a new checkout of a "
            "shared registry, a restored backup, a revoked key); audited and committed. "
            "Never overrides a broken chain.",
        ),
    ] = False,
    workspace: WorkspaceOpt = None,
    as_user: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Check the hash chain and its signed head: exit 1 naming every problem.

    The head (seq and hash of the newest event) is signed into
    .mw/audit-anchor.json on every audit write; an intact verify also commits
    it to audit/anchor.json. A missing, unsigned or rewritten anchor, or a log
    shorter than its anchored head (a cut tail), fails. A workspace without
    anchors gets them on its first intact verify.
    """
    from modelworks._console import console, err_console
    from modelworks.artifacts.verify import verify_audit

    parent = ctx.obj or {}
    json_out = json_out or bool(parent.get("json"))
    ws, store = open_workspace(workspace or parent.get("workspace"))
    who = (
        actor(ws, as_user, "admin", "accept the audit head")
        if accept_head
        else actor(ws, as_user, "viewer", "verify the audit log")
    )
    report = verify_audit(ws, store, accept_head=accept_head, actor=who)
    if json_out:
        emit_json(report)
    elif report["intact"]:
        console.print(f"[green]audit log intact[/green] ({report['events']} events)")
        for detail in report["accepted"]:
            console.print(f"  [yellow]accepted[/yellow] {detail}", highlight=False)
        _print_anchored(report["anchored"])
    else:
        for p in report["problems"]:
            where = f"seq {p['seq']}: " if p["seq"] else ""
            err_console.print(
                f"[red]{where}{p['kind']}[/red]: {p['detail']}",
                highlight=False,
                soft_wrap=True,
            )
        err_console.print(
            f"[red]error:[/red] audit log is NOT intact: {len(report['problems'])} "
            f"problem(s) in {report['events']} events",
            highlight=False,
        )
    if not report["intact"]:
        raise typer.Exit(1)


def _print_anchored(anchored: dict[str, Any] | None) -> None:
    from modelworks._console import console

    if not anchored:
        return
    if not anchored["signed"]:
        console.print(f"  [yellow]head not anchored[/yellow]: {anchored['reason']}")
        return
    done = f", committed {anchored['commit'][:10]}" if anchored["commit"] else ""
    console.print(f"  signed head at seq {anchored['seq']}{done}", highlight=False)


@keys_app.command("rotate")
def keys_rotate_cmd(
    drop_old: Annotated[
        bool,
        typer.Option(
            "--drop-old",
            help="Do not keep the old public key (for a compromised key): "
            "versions signed with it stop verifying.",
        ),
    ] = False,
    workspace: WorkspaceOpt = None,
    as_user: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Make a new signing key pair and delete the old private key.

    The old private key is deleted from .mw/keys: nothing can sign with it
    again, and no archive is kept. The old public key is kept, committed as
    retired, so versions signed before the rotation still verify; `mw keys
    revoke ID` stops it verifying.
    """
    from modelworks._console import console
    from modelworks.security.keys import rotate_signing_key

    ws, store = open_workspace(workspace)
    result = rotate_signing_key(
        ws, store, actor=actor(ws, as_user, "admin", "rotate keys"), keep_old=not drop_old
    )
    if json_out:
        emit_json(result)
        return
    b, a = result["before"], result["after"]
    console.print(
        f"rotated signing key: {b['fingerprint'][:19]} -> [bold]{a['fingerprint'][:19]}[/bold]",
        highlight=False,
    )
    kept = (
        f"kept as {b['retired_as']}"
        if b["retired_as"]
        else "dropped: older versions no longer verify"
    )
    console.print(f"  old public key {kept}", highlight=False)
    console.print("  old private key deleted", highlight=False)
    if result["commit"]:
        console.print(f"  committed {result['commit'][:10]}")


@keys_app.command("list")
def keys_list_cmd(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """The public signing keys: the current one, then retired ones (newest first), and revoked."""
    from modelworks._console import console
    from modelworks.security.keys import all_public_keys, fingerprint
    from modelworks.security.revoked import key_id, revoked_keys
    from modelworks.workspace import Workspace

    ws = Workspace.load(workspace)
    revoked = revoked_keys(ws)
    keys: list[dict[str, Any]] = []
    for i, k in enumerate(all_public_keys(ws)):
        fp = fingerprint(k)
        state = "revoked" if fp in revoked else "current" if i == 0 else "retired"
        keys.append(
            {
                "id": key_id(fp),
                "path": ws.show(k),
                "fingerprint": fp,
                "current": i == 0,
                "state": state,
                "revoked": revoked.get(fp),
            }
        )
    if json_out:
        emit_json({"keys": keys})
        return
    colour = {"current": "green", "retired": "dim", "revoked": "red"}
    for entry in keys:
        c, st = colour[entry["state"]], entry["state"]
        console.print(f"[{c}]{st:<8}[/{c}] {entry['id']}  {entry['path']}", highlight=False)


@keys_app.command("revoke")
def keys_revoke_cmd(
    key: Annotated[str, typer.Argument(metavar="ID", help="Key ID as `mw keys list` shows it.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded and committed).")] = "",
    workspace: WorkspaceOpt = None,
    as_user: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Revoke a retired public key: versions it signed stop verifying and loading.

    The revocation is committed to keys/revoked.json; deleting .mw (or the
    file) does not undo it. The current signing key cannot be revoked: run
    `mw keys rotate` first.
    """
    from modelworks._console import console
    from modelworks.security.revoked import revoke_key

    ws, store = open_workspace(workspace)
    result = revoke_key(
        ws, store, key, actor=actor(ws, as_user, "admin", "revoke a key"), reason=reason
    )
    if json_out:
        emit_json(result)
        return
    done = f" (commit {result['commit'][:10]})" if result["commit"] else ""
    console.print(
        f"revoked signing key [bold]{result['id']}[/bold] {result['public_key']}{done}",
        highlight=False,
    )


@secret_app.command("seal")
def secret_seal_cmd(
    name: Annotated[str, typer.Argument(help="Secret name (letters, digits, '_', '.', '-').")],
    no_commit: Annotated[
        bool, typer.Option("--no-commit", help="Write the file, do not commit it.")
    ] = False,
    workspace: WorkspaceOpt = None,
    as_user: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Seal a value (from standard input, or a hidden prompt) into secrets/NAME.sealed."""
    from modelworks._console import console
    from modelworks.security.keys import check_secret_name, seal_secret

    ws, store = open_workspace(workspace)
    check_secret_name(name)
    value = _read_value(name)
    result = seal_secret(
        ws,
        store,
        name,
        value,
        actor=actor(ws, as_user, "admin", "seal a secret"),
        commit=not no_commit,
    )
    if json_out:
        emit_json(result)
        return
    verb = "resealed" if result["replaced"] else "sealed"
    done = f" (commit {result['commit'][:10]})" if result["commit"] else ""
    console.print(f"{verb} [bold]{name}[/bold] -> {result['path']}{done}", highlight=False)


def _read_value(name: str) -> bytes:
    """The secret from stdin (one trailing newline dropped), or a hidden prompt on a terminal."""
    if sys.stdin is not None and sys.stdin.isatty():
        text = typer.prompt(f"value of {name}", hide_input=True, confirmation_prompt=True)
        return str(text).encode()
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    return data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data


@secret_app.command("list")
def secret_list_cmd(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """The names of the sealed secrets (never their values)."""
    from modelworks._console import console
    from modelworks.security.keys import secrets_dir
    from modelworks.security.secrets import list_sealed
    from modelworks.workspace import Workspace

    ws = Workspace.load(workspace)
    names = list_sealed(secrets_dir(ws))
    if json_out:
        emit_json({"secrets": names})
        return
    for name in names:
        console.print(name, highlight=False)
    if not names:
        console.print("no sealed secrets (add one with `mw secret seal NAME`)", style="dim")


def register(app: typer.Typer) -> None:
    app.command("verify")(verify_cmd)
    app.add_typer(audit_app, name="audit")
    app.add_typer(keys_app, name="keys")
    app.add_typer(secret_app, name="secret")
