"""The plan reads the registry as plain SQL (registry/fastread.py): through the Store's engine
on SQLite and PostgreSQL, and through sqlite3 alone for `mw plan` in a local workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelworks.plan import plan
from modelworks.registry import fastread
from modelworks.registry.models import Model, ModelVersion, PipelineVersion, Run
from modelworks.registry.store import Store
from modelworks.testing import make_workspace, mw_json, small_fleet
from modelworks.workspace import Workspace


def _seed(ws: Workspace, store: Store) -> None:
    """model-0 registered as planned, model-1 with other inputs, model-2 a failed run."""
    first = {m.name: m for m in plan(ws, store).models}
    with store.session() as s:
        ref = first["model-0"].pipeline
        assert ref is not None
        s.add(PipelineVersion(name=ref.name, version=ref.version, hash=ref.hash, snapshot="/x"))
        rows = {n: Model(name=n, pipeline="tiny") for n in ("model-0", "model-1", "model-2")}
        s.add_all(rows.values())
        s.flush()
        for name, fp in (("model-0", first["model-0"].fingerprint), ("model-1", "e" * 64)):
            old = dict(first[name].inputs)
            if name == "model-1":
                old["spec"] = {**old["spec"], "hyperparameters": {"C": 0.5}}
            s.add(
                ModelVersion(
                    model_id=rows[name].id,
                    version=str(fp)[:10],
                    fingerprint=fp,
                    status="registered",
                    inputs=old,
                )
            )
        s.add(
            Run(
                model_id=rows["model-2"].id,
                fingerprint=first["model-2"].fingerprint,
                version="v",
                status="failed",
                error="boom",
            )
        )


def _fleet(tmp_path: Path, url: str) -> tuple[Workspace, Store]:
    ws = make_workspace(tmp_path / "ws", registry={"url": url})
    small_fleet(ws)
    store = Store(ws.registry_url)
    _seed(ws, store)
    return ws, store


def _actions(p: dict[str, Any]) -> dict[str, tuple[str, list[str]]]:
    return {m["name"]: (m["action"], m["reasons"]) for m in p["models"]}


def test_the_plan_reads_the_same_on_each_backend(tmp_path: Path, registry_url: str) -> None:
    ws, store = _fleet(tmp_path, registry_url)
    got = _actions(plan(ws, store).to_dict())
    assert got["model-0"] == ("unchanged", [])
    assert got["model-1"] == ("update", ["hyperparameter C 0.5 -> 2.0"])
    assert got["model-2"][0] == "create"
    assert got["model-2"][1] == ["new model", "retry: the last run failed: boom"]
    direct = fastread.open_sqlite(registry_url)
    if direct is not None:  # SQLite: the CLI's lean read gives the very same plan
        with fastread.reading(direct):
            lean = plan(ws, None, reader=direct)
        assert lean.to_dict() == plan(ws, store).to_dict()


def test_mw_plan_json_is_the_library_plan(tmp_path: Path, capsys: Any) -> None:
    ws, store = _fleet(tmp_path, f"sqlite:///{tmp_path / 'registry.db'}")
    assert mw_json(capsys, ws, "plan") == plan(ws, store).to_dict()
    assert mw_json(capsys, ws, "plan", "model-1")["summary"]["update"] == 1
