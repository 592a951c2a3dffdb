"""`mw gc`: remove what crashes left behind and nothing references."""

from __future__ import annotations

from typing import Annotated

import typer

from modelworks.cli import emit_json
from modelworks.cli._common import ActorOpt, JsonOpt, WorkspaceOpt, actor, open_workspace


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def gc_cmd(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")
    ] = False,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
    as_user: ActorOpt = None,
) -> None:
    """Remove unreferenced OCI blobs, orphan images, leftover work folders and temp files."""
    from rich.markup import escape

    from modelworks._console import console
    from modelworks.apply import workspace_lock
    from modelworks.artifacts.gc import collect

    ws, store = open_workspace(workspace)
    if dry_run:
        report = collect(ws, store, dry_run=True)
    else:
        actor(ws, as_user, "admin", "garbage-collect the workspace")
        lock = workspace_lock(ws, 0)  # no apply may write images while gc decides
        try:
            report = collect(ws, store)
        finally:
            lock.release()
    if json_out:
        emit_json(report.to_dict())
        return
    verb = "would remove" if dry_run else "removed"
    for item in report.items:
        console.print(f"{verb} {item.kind} {escape(item.path)} ({_human(item.bytes)})")
    freed = "would free" if dry_run else "freed"
    console.print(
        f"{len(report.items)} item(s) {verb}, {freed} {report.bytes} bytes "
        f"({_human(report.bytes)}); kept {report.kept_images} image(s)",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("gc")(gc_cmd)
