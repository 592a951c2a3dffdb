"""Printers shared by the CLI and the demo (library code: no CLI imports)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from modelworks._console import console

ACTION_STYLE = {"create": "green", "update": "yellow", "unchanged": "dim", "error": "red"}


def print_plan(p: Any, show_unchanged: bool) -> None:
    """Each model's action and reasons, then the plan's one-line summary."""
    for m in p.models:
        if m.action == "unchanged" and not show_unchanged:
            continue
        style = ACTION_STYLE[m.action]
        version = f" {m.version}" if m.version else ""
        console.print(
            f"[{style}]{m.action:>9}[/{style}] [bold]{escape(m.name)}[/bold]{version}",
            highlight=False,
        )
        for reason in m.reasons:
            console.print(f"           {escape(reason)}", highlight=False, soft_wrap=True)
    console.print(f"Plan: {plan_line(p.summary)}.")


def plan_line(s: dict[str, int]) -> str:
    """A plan's counts as `mw plan` says them: '62 to create, 0 to update, ...' (Rich markup)."""
    return (
        f"[green]{s['create']} to create[/green], [yellow]{s['update']} to update[/yellow], "
        f"{s['unchanged']} unchanged, [red]{s['error']} error(s)[/red]"
    )


class ApplyProgress:
    """A Rich progress bar on stderr fed by apply's callbacks (silent with --json)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> tuple[Any, Any]:
        return self.start, self.advance

    def start(self, total: int) -> None:
        if self.quiet:
            return
        if self.progress is not None:  # retries after a backoff add to the total
            self.progress.update(self.task, total=self.progress.tasks[0].total + total)
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        from modelworks._console import err_console

        self.progress = Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=err_console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("", total=total)

    def advance(self, result: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.update(
                self.task, advance=1, description=f"{result['model']} {result['status']}"
            )

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def print_apply(result: Any) -> None:
    """What apply trained, gated, rejected or failed, then its one-line summary."""
    # Names, reasons and errors come from specs and pipeline code: print them, never parse them.
    for t in result.trained:
        metrics = ", ".join(f"{k}={v:.3g}" for k, v in sorted(t["metrics"].items()))
        dirty = "  [yellow](dirty: not deployed, not promotable)[/yellow]" if t.get("dirty") else ""
        console.print(
            f"[green]  trained[/green] {t['name']} {t['version']}  {metrics}{dirty}",
            highlight=False,
        )
    for g in result.gated:
        console.print(
            f"[yellow]    gated[/yellow] {g['name']} {g['version']}: "
            + escape("; ".join(g["reasons"])),
            highlight=False,
        )
    for r in result.rejected:
        console.print(
            f"[red] rejected[/red] {r['name']} {r['version']}: {escape(str(r['reason']))}",
            highlight=False,
            soft_wrap=True,
        )
    for f in result.failed:
        console.print(
            f"[red]   failed[/red] {f['name']}: {escape(str(f['error']))}",
            highlight=False,
            soft_wrap=True,
        )
    for e in result.errors:
        console.print(
            f"[red]    error[/red] {e['name']}: {escape(str(e['error']))}",
            highlight=False,
            soft_wrap=True,
        )
    d = result.to_dict()["summary"]
    console.print(
        f"Apply: {d['trained']} trained, {d['gated']} gated, {d['rejected']} rejected, "
        f"{d['failed']} failed, "
        f"{d['errors']} error(s), {d['skipped']} unchanged, {d['deployed']} deployed"
        + (f" (commit {result.commit[:10]})" if result.commit else "")
        + f" in {result.seconds:.1f}s."
    )


def print_status(rows: list[dict[str, Any]]) -> None:
    """The fleet as a table; names and versions are never cut (they fold in a narrow terminal)."""
    # The pipeline sits under the model's name, one metric per line: seven columns side by side
    # cut names to `cancer-…` in an 80-column terminal.
    table = Table(title=f"{len(rows)} models", show_edge=False, pad_edge=False)
    longest = max((len(r["name"]) for r in rows), default=5)
    table.add_column("model / pipeline", overflow="fold", min_width=min(longest, 32))
    table.add_column("version", overflow="fold", min_width=10)
    table.add_column("status", overflow="fold")
    table.add_column("deployed", overflow="fold")
    table.add_column("metrics", overflow="fold")
    style = {"registered": "green", "gated": "yellow", "rejected": "red"}
    for r in rows:
        metrics = "\n".join(f"{k}={v:.3g}" for k, v in sorted(r["metrics"].items())[:3])
        st = r["status"] or (r["last_run"] or {}).get("status") or "-"
        table.add_row(
            f"{escape(r['name'])}\n[dim]{escape(r['pipeline'] or '-')}[/dim]",
            r["version"] or "-",
            f"[{style.get(st, 'red')}]{st}[/]",
            _deployed(r["version"], r["deployed"]),
            metrics or "-",
        )
    console.print(table)


def _deployed(latest: str | None, deployed: dict[str, str]) -> str:
    """'test, prod' where the latest version is served; 'prod 0598ccf2b8' where another is."""
    shown = [env if version == latest else f"{env} {version}" for env, version in deployed.items()]
    return "\n".join(shown) or "-"
