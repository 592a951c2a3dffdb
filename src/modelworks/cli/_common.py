"""Options and helpers shared by the command modules."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

WorkspaceOpt = Annotated[
    Path | None,
    typer.Option(
        "--workspace", "-C", envvar="MW_WORKSPACE", help="Workspace folder (default: here)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ActorOpt = Annotated[str | None, typer.Option("--as", help="Act as this user (default: git user).")]


def open_workspace(path: Path | None) -> tuple[Workspace, Store]:
    """The workspace at or above `path` and its registry."""
    from modelworks.security.anchor import open_store
    from modelworks.workspace import Workspace

    ws = Workspace.load(path)
    return ws, open_store(ws)


def actor(ws: Workspace, given: str | None) -> str:
    from modelworks import _git

    return given or _git.user_name(ws.root)
