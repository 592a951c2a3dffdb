"""Tenant commands: `mw tenant list` and `mw tenant show T`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from modelworks.cli import emit_json
from modelworks.cli._common import JsonOpt, WorkspaceOpt, open_workspace

tenant_app = typer.Typer(
    help="Tenants: teams sharing this workspace (tenants: in modelworks.yaml).",
    no_args_is_help=True,
)


def _quota(value: Any) -> str:
    return "-" if value is None else str(value)


def _all(values: list[str] | None) -> str:
    return "all" if values is None else (", ".join(values) or "none")


@tenant_app.command("list")
def tenant_list_cmd(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """Every tenant: display name, weight, quotas, models, source (file or api)."""
    from rich.table import Table

    from modelworks._console import console
    from modelworks.registry.tenant_views import list_tenants

    ws, store = open_workspace(workspace)
    rows = list_tenants(ws, store)
    if json_out:
        emit_json({"tenants": rows})
        return
    table = Table(title=f"{len(rows)} tenant(s)")
    for col in ("name", "display name", "weight", "max models", "max bytes", "models", "source"):
        table.add_column(col)
    for r in rows:
        q = r["quotas"]
        table.add_row(
            r["name"],
            r["display_name"],
            f"{r['weight']:g}",
            _quota(q["max_models"]),
            _quota(q["max_artifact_bytes"]),
            str(r["models"]),
            r["source"],
        )
    console.print(table)


@tenant_app.command("show")
def tenant_show_cmd(
    tenant: Annotated[str, typer.Argument(help="Tenant name.")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One tenant: settings, effective approvals per environment, usage against its quotas."""
    from modelworks._console import console
    from modelworks.registry.tenant_views import show_tenant

    ws, store = open_workspace(workspace)
    info = show_tenant(ws, store, tenant)
    if json_out:
        emit_json(info)
        return
    q, use = info["quotas"], info["usage"]
    lines = [
        f"[bold]{info['name']}[/bold] ({info['display_name']}, from {info['source']})",
        f"  weight        {info['weight']:g}",
        f"  data roots    {', '.join(info['data_roots']) or '-'}",
        f"  pipelines     {_all(info['pipelines'])}",
        f"  environments  {_all(info['environments'])}",
        "  approvals     " + (", ".join(f"{e}: {n}" for e, n in info["approvals"].items()) or "-"),
        f"  oci namespace {info['oci_namespace']}",
        f"  models        {use['models']['used']} of {_quota(q['max_models'])}",
        f"  artifacts     {use['artifact_bytes']['used']} bytes of "
        f"{_quota(q['max_artifact_bytes'])}",
        f"  runs          max {_quota(q['max_concurrent_runs'])} at once, "
        f"{_quota(q['max_queued_runs'])} queued",
    ]
    for line in lines:
        console.print(line, highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(tenant_app, name="tenant")
