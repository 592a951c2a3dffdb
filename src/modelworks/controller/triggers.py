"""Triggers that are not a user's commit: cron schedules, files dropped into watched data
folders, and retrains "on the newest data" asked for by a schedule or by drift.

A scheduled or drift retrain first moves the spec to the newest version of its dataset
(for a dvc source pinned with `dvc_hash`: what the data repo's pointer file says now) with
a commit, so Git stays the truth; then it applies the model. When nothing is newer the
fingerprint is the same and nothing trains: the trigger is still recorded as a run with
status `succeeded` and zero attempts (and an audit event), so `mw runs` shows it happened.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from croniter import croniter
from sqlalchemy import select

from modelworks import _git
from modelworks.controller.repos import toplevel
from modelworks.data.dirs import folder_md5, tracked_dir
from modelworks.data.dvc import file_md5, read_pointer
from modelworks.data.sources import DataResolver
from modelworks.errors import ConfigError, DataError
from modelworks.registry import audit
from modelworks.registry.models import Model, Run
from modelworks.spec import _read_raw, dump_spec, load_specs
from modelworks.tenancy.names import qualified

if TYPE_CHECKING:
    from modelworks.controller.state import ControllerState
    from modelworks.plan import Plan
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

IGNORED_SUFFIXES = (".dvc", ".tmp", ".part", ".crdownload", ".swp")


# -- schedules ---------------------------------------------------------------------------------


def schedules(ws: Workspace) -> dict[str, str]:
    """Qualified model name -> cron expression, for every valid spec with a `schedule`."""
    return {
        item.qualified: item.spec.schedule
        for item in load_specs(ws.models_dir, tenants=ws.settings.tenants)
        if item.spec is not None and item.spec.schedule
    }


def due_schedules(table: dict[str, str], state: ControllerState, now: datetime) -> list[str]:
    """Models whose cron time passed since their last fire; a new schedule starts counting now."""
    due = []
    for name, cron in sorted(table.items()):
        last = state.schedules.get(name)
        if last is None:
            state.schedules[name] = now.isoformat()
            continue
        nxt = croniter(cron, datetime.fromisoformat(last)).get_next(datetime)
        if nxt <= now:
            due.append(name)
    for name in [n for n in state.schedules if n not in table]:
        del state.schedules[name]
    return due


# -- newest data -------------------------------------------------------------------------------


@dataclass
class Bump:
    """Specs moved to the newest version of their dataset, and the commit that did it."""

    specs: dict[str, tuple[str, str]] = field(default_factory=dict)
    commit: str | None = None


def bump_to_newest(ws: Workspace, names: list[str], reason: str, actor: str) -> Bump:
    """Set each named spec's pinned dvc_hash to its data repo's current pointer; one commit."""
    wanted = set(names)
    data = DataResolver(ws)
    bump = Bump()
    paths: list[Path] = []
    for item in load_specs(ws.models_dir, tenants=ws.settings.tenants):
        spec = item.spec
        if spec is None or item.qualified not in wanted:
            continue
        ds = spec.data_source
        if ds.type != "dvc" or not ds.dvc_hash:
            continue  # floating dvc and local sources always read the newest data
        try:
            newest = data.pointer_hash(data.repo_root(ds.repo_url), str(ds.dataset))
        except DataError:
            continue  # plan reports the broken data source
        if newest == ds.dvc_hash:
            continue
        raw = _read_raw(item.path)
        raw["data_source"]["dvc_hash"] = newest
        dump_spec(raw, item.path)
        bump.specs[item.qualified] = (ds.dvc_hash, newest)
        paths.append(item.path)
    if paths:
        bump.commit = _commit_files(ws, paths, _bump_message(reason, bump), actor)
    return bump


def _bump_message(reason: str, bump: Bump) -> str:
    lines = "\n".join(f"- {n}: data {o[:8]} -> {m[:8]}" for n, (o, m) in sorted(bump.specs.items()))
    return f"{reason}: retrain {len(bump.specs)} model(s) on the newest data\n\n{lines}\n"


def _commit_files(ws: Workspace, paths: list[Path], message: str, actor: str) -> str | None:
    top = toplevel(paths[0]) or ws.root
    rel = [os.path.relpath(p.resolve(), top) for p in paths]
    return _git.commit(top, rel, message, author=actor)


def record_noops(
    ws: Workspace, store: Store, p: Plan, names: list[str], trigger: str, actor: str
) -> list[dict[str, Any]]:
    """A succeeded, zero-attempt run per named model whose fingerprint is already registered."""
    wanted = set(names)
    now = datetime.now(UTC)
    done = []
    with store.session() as s:
        rows = s.execute(select(Model.tenant, Model.name, Model.id)).tuples().all()
        ids = {qualified(t, n): i for t, n, i in rows}
        for mp in p.models:
            if mp.name not in wanted or mp.action != "unchanged" or mp.name not in ids:
                continue
            run = Run(
                model_id=ids[mp.name],
                tenant=mp.tenant,
                fingerprint=mp.fingerprint,
                version=mp.version,
                status="succeeded",
                trigger=trigger,
                attempts=0,
                worker="controller",
                duration=0.0,
                created_at=now,
                started_at=now,
                finished_at=now,
            )
            s.add(run)
            s.flush()
            run.log_path = str(_noop_log(ws, mp.name, run.id, trigger, mp.version or "", now))
            done.append({"name": mp.name, "version": mp.version or "", "run_id": run.id})
    audit.record(
        store,
        [
            audit.event(
                f"retrain.{trigger}",
                str(d["name"]),
                actor=actor,
                after={"version": d["version"], "run_id": d["run_id"], "result": "unchanged"},
            )
            for d in done
        ],
    )
    return done


def _noop_log(
    ws: Workspace, name: str, run_id: int, trigger: str, version: str, now: datetime
) -> Path:
    path = ws.state_dir / "logs" / name / f"{run_id}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"{now.isoformat()} {trigger} trigger: retrain on the newest data version\n"
        f"the data and every other input are unchanged: version {version} is already "
        "registered, so nothing was trained\n"
    )
    return path


# -- watched data folders ----------------------------------------------------------------------


def check_watch(ws: Workspace) -> None:
    """Refuse, at start, a data.watch folder outside the workspace (versions live in its Git)."""
    root = ws.root.resolve()
    for folder in ws.settings.data.watch:
        if not ws.path(folder).resolve().is_relative_to(root):
            raise ConfigError(
                f"modelworks.yaml: field 'data.watch': folder {folder!r} is outside the workspace "
                f"{root}; watched folders must be inside it (their pointers are committed there)"
            )


def scan_watched(ws: Workspace, state: ControllerState, settle: float = 1.0) -> list[Path]:
    """Files in data.watch folders that are new or changed since they were last versioned."""
    found = []
    now = datetime.now(UTC).timestamp()
    for folder in ws.settings.data.watch:
        base = ws.path(folder)
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if not _candidate(path):
                continue
            st = path.stat()
            if now - st.st_mtime < settle:
                continue  # still being written; the next tick takes it
            key = str(path.relative_to(ws.root)) if path.is_relative_to(ws.root) else str(path)
            if state.watch.get(key) == [st.st_size, st.st_mtime_ns]:
                continue
            # A file of a directory dataset (`folder.dvc`) versions its whole folder.
            target = tracked_dir(path, base) or path
            if _versioned(target, ws.settings.data.max_files):
                state.watch[key] = [st.st_size, st.st_mtime_ns]
                continue
            if target not in found:
                found.append(target)
    return found


def _candidate(path: Path) -> bool:
    name = path.name
    return (
        path.is_file()
        and not name.startswith(".")
        and not name.endswith(IGNORED_SUFFIXES)
        and ".git" not in path.parts
    )


def _versioned(path: Path, max_files: int) -> bool:
    pointer = path.with_name(path.name + ".dvc")
    if not pointer.exists():
        return False
    try:
        now = folder_md5(path, max_files) if path.is_dir() else file_md5(path)
        return read_pointer(pointer).md5 == now
    except DataError:
        return False


def version_files(
    ws: Workspace, state: ControllerState, files: list[Path], actor: str
) -> dict[str, Any]:
    """Version each file as `mw data add` does and commit pointers and bumped specs together."""
    from modelworks.data.add import add

    added, paths, errors = [], [], []
    for path in files:
        st = path.stat()
        state.watch[str(path.relative_to(ws.root))] = [st.st_size, st.st_mtime_ns]
        try:
            v = add(ws, path, update_specs=True, commit=False, actor=actor)
        except DataError as exc:  # reported once; taken again when the file changes
            errors.append(str(exc))
            continue
        paths += [v.pointer, path.parent / ".gitignore", *(ws.root / b for b in v.bumped)]
        added.append(v)
    commit = None
    if added and _git.is_repo(ws.root):
        lines = "\n".join(
            f"- {v.dataset} {(v.previous or 'new')[:8]} -> {v.md5[:8]}"
            + (f" (bumps {', '.join(v.bumped)})" if v.bumped else "")
            for v in added
        )
        rel = sorted({str(p.relative_to(ws.root)) for p in paths})
        commit = _git.commit(
            ws.root,
            rel,
            f"data: {len(added)} new file version(s) in watched folders\n\n{lines}\n",
            author=actor,
        )
    return {"files": [v.to_dict() for v in added], "commit": commit, "errors": errors}
