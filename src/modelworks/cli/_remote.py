"""The CLI's remote mode: with MW_SERVER set, commands call the control plane instead of the
local workspace and print its answer with the same printers (modelworks.remote is the client).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from modelworks.errors import ConfigError
from modelworks.remote import Client, client, path

LOG_BYTES = 16 * 2**20  # the most of a log the server sends in one answer

__all__ = ["Client", "path", "plan_view", "remote", "show_path", "status_order"]


def remote(as_user: str | None = None) -> Client | None:
    """The control plane's client when MW_SERVER is set, else None (work locally)."""
    found = client()
    if found is not None and as_user is not None:
        raise ConfigError(
            "--as cannot be used with MW_SERVER: the control plane acts as the user of "
            "MW_TOKEN (or --token); drop --as"
        )
    return found


def show_path(model: str) -> str:
    """`GET /api/v1/models/{tenant}/{name}` for a model ref (`churn` is the default tenant's)."""
    from modelworks.tenancy.access import DEFAULT_TENANT
    from modelworks.tenancy.names import split_ref

    tenant, name = split_ref(model)
    return path("models", tenant or DEFAULT_TENANT, name)


def status_order(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The server pages models by (tenant, name); `mw status` lists them by name."""
    return sorted(rows, key=lambda r: (str(r["name"]).rpartition("/")[2], r.get("tenant") or ""))


def plan_view(data: dict[str, Any]) -> Any:
    """A plan's JSON as the object `print_plan` reads (models with action/name/version/reasons)."""
    models = [SimpleNamespace(**m) for m in data.get("models", [])]
    return SimpleNamespace(models=models, summary=data["summary"])


def print_queued(result: dict[str, Any]) -> None:
    """What a remote `mw apply` did: the runs it queued (training happens on the server)."""
    from rich.markup import escape

    from modelworks._console import console

    for r in result["runs"]:
        console.print(
            f"  run {r['id']:>6}  {escape(r['model'])} {r['version']}  {r['status']}",
            highlight=False,
        )
    for e in result["errors"]:
        console.print(f"[red]    error[/red] {escape(e['name'])}: {escape(e['error'])}")
    console.print(
        f"Apply: {result['queued']} run(s) queued, {len(result['runs'])} waiting or running, "
        f"{len(result['skipped'])} unchanged, {len(result['errors'])} error(s); "
        "the control plane's controller trains them (`mw runs` shows progress).",
        highlight=False,
    )


def remote_log(api: Client, model: str, run: int | None) -> tuple[dict[str, Any], str]:
    """A run of `model` (the latest unless named) and its log, as `mw logs` shows them."""
    from modelworks.errors import NotFoundError

    if run is None:
        found = api.get(path("runs"), {"model": model, "limit": 1})["runs"]
        if not found:
            raise NotFoundError(f"no run of model {model!r}")
        run = int(found[0]["id"])
    data = api.get(path("runs", run, "log"), {"max_bytes": LOG_BYTES})
    if data["run"]["model"] != model:
        raise NotFoundError(f"no run {run} of model {model!r}")
    return data["run"], str(data["log"])
