"""`mw demo`: 62 models through the whole line, then a data change retrains only its models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from modelworks._console import console
from modelworks.errors import ConfigError

CHANGED_DATASET = "data/wine/wine.csv"


def _apply(ws: Any, store: Any, workers: int | None, quiet: bool) -> Any:
    from modelworks._render import ApplyProgress
    from modelworks.apply import apply
    from modelworks.runs.executor import for_workspace

    ex = for_workspace(ws, workers)
    with ApplyProgress(quiet) as (on_start, on_result):
        return apply(ws, store, executor=ex, actor="demo", on_start=on_start, on_result=on_result)


def change_dataset(path: Path) -> None:
    """A new version of a dataset: a fresh batch of measurements with a little sensor noise."""
    header = path.read_text().splitlines()[0]
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    rng = np.random.default_rng(7)
    table[:, :-1] *= 1 + rng.normal(0, 0.01, table[:, :-1].shape)
    np.savetxt(path, table, delimiter=",", header=header, comments="", fmt="%.6g")


def up_hint(directory: Path, port: int) -> str:
    """How to run the whole platform on the demo workspace and send it a prediction."""
    body = (
        '{"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], '
        '"data": [5.1, 3.5, 1.4, 0.2]}]}'
    )
    return (
        "Run the platform (controller, inference server, endpoints): "
        f"[cyan]cd {directory} && mw up[/cyan]\n"
        f"then predict from another shell: [cyan]curl -s -X POST "
        f"http://127.0.0.1:{port}/v2/models/iris-logreg/infer "
        f"-H 'content-type: application/json' -d '{body}'[/cyan]"
    )


def run_demo(directory: Path, *, workers: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Build the demo workspace in `directory`, run the line twice, and return a summary."""
    from modelworks._render import plan_line, print_apply, print_plan, print_status
    from modelworks.data.add import add
    from modelworks.init import init, populate
    from modelworks.plan import plan
    from modelworks.registry.queries import status
    from modelworks.security.anchor import open_store

    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"{directory} exists and is not empty; give `mw demo` a new folder")
    say = (lambda *a, **k: None) if quiet else console.print
    t0 = time.perf_counter()
    ws = init(directory, name="demo-fleet")
    count = populate(ws, "demo")
    pipelines = sum(1 for p in ws.pipelines_dir.iterdir() if p.is_dir())
    say(
        f"[bold]1. Workspace[/bold] {ws.root}: {count} model specs, {pipelines} pipelines, "
        "versioned data"
    )
    store = open_store(ws)
    first_plan = plan(ws, store)
    say(f"[bold]2. Plan[/bold]: {plan_line(first_plan.summary)}")
    first = _apply(ws, store, workers, quiet)
    if not quiet:
        print_apply(first)
        print_status(status(store))
    say(f"[bold]3. A new version of {CHANGED_DATASET}[/bold] arrives")
    change_dataset(ws.root / CHANGED_DATASET)
    version = add(ws, ws.root / CHANGED_DATASET, actor="demo")
    second_plan = plan(ws, store)
    if not quiet:
        print_plan(second_plan, show_unchanged=False)
    second = _apply(ws, store, workers, quiet)
    if not quiet:
        print_apply(second)
    seconds = time.perf_counter() - t0
    say(
        f"[bold]Done[/bold] in {seconds:.1f}s: {len(second.trained) + len(second.gated)} model(s) "
        f"retrained after the data change, {len(second.skipped)} untouched."
    )
    say(f"Explore: [cyan]cd {directory} && mw status && mw show wine-logreg[/cyan]")
    say(up_hint(directory, ws.settings.serving.port), soft_wrap=True, highlight=False)
    return {
        "workspace": str(ws.root),
        "models": count,
        "seconds": round(seconds, 2),
        "first_apply": first.to_dict()["summary"],
        "data_change": version.to_dict(),
        "second_plan": second_plan.summary,
        "second_apply": second.to_dict()["summary"],
        "retrained": sorted(t["name"] for t in second.trained + second.gated),
    }
