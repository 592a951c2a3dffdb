"""Apply's fixed costs: workers forked from a warm process, deploy checks through a stat cache."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import yaml

from modelworks.apply import apply
from modelworks.registry.store import Store
from modelworks.runs.executor import LocalExecutor
from modelworks.runs.pool import ProcessPool, context
from modelworks.runs.warm import WarmProcess
from modelworks.workspace import Workspace


def _job(job: dict) -> dict:
    if job.get("sleep"):
        time.sleep(job["sleep"])
    if job.get("die"):
        os._exit(3)
    return {
        "run_id": job["run_id"],
        "model": job["model"],
        "status": "succeeded",
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "warm": os.environ.get("MW_TEST_WARMED"),
    }


def _slow_warm() -> None:
    time.sleep(1.0)
    os.environ["MW_TEST_WARMED"] = "yes"


def test_workers_come_warm_from_the_warm_process_which_does_not_block_the_caller() -> None:
    t = time.monotonic()
    warm = WarmProcess(context(), _job, _slow_warm)
    assert time.monotonic() - t < 0.8  # the caller plans while the warm process imports
    try:
        jobs = [{"run_id": i, "model": f"m{i}"} for i in range(4)]
        results = list(ProcessPool(2, _job, warm=warm).run(jobs))
    finally:
        warm.close()
    assert sorted(r["run_id"] for r in results) == [0, 1, 2, 3]
    assert {r["ppid"] for r in results} == {warm.proc.pid}  # forked by the warm process
    assert {r["warm"] for r in results} == {"yes"}  # after it warmed up
    assert not warm.proc.is_alive()


def test_a_warm_forked_worker_that_dies_or_hangs_is_reported_and_replaced() -> None:
    warm = WarmProcess(context(), _job, lambda: None)
    try:
        jobs = [
            {"run_id": 0, "model": "dies", "die": True},
            {"run_id": 1, "model": "stuck", "sleep": 30},
            *({"run_id": i, "model": f"m{i}"} for i in range(2, 5)),
        ]
        t = time.monotonic()
        results = {r["run_id"]: r for r in ProcessPool(2, _job, 1.0, warm).run(jobs)}
        assert time.monotonic() - t < 15
    finally:
        warm.close()
    assert "worker process died (exit code 3)" in results[0]["error"]
    assert "timed out after 1s" in results[1]["error"]
    assert all(results[i]["status"] == "succeeded" for i in (2, 3, 4))


def test_local_executor_start_is_once_and_close_stops_it() -> None:
    ex = LocalExecutor(1, fn=_job)
    assert ex.start() is True
    assert ex.start() is False  # already warming
    assert ex.warm is not None
    proc = ex.warm.proc
    assert [r["run_id"] for r in ex.run([{"run_id": 7, "model": "m"}])] == [7]
    ex.close()
    assert not proc.is_alive()


def test_a_warm_process_with_nothing_to_do_stops_at_once() -> None:
    warm = WarmProcess(context(), _job, lambda: time.sleep(30))  # imports that take long
    t = time.monotonic()
    warm.close()
    assert time.monotonic() - t < 3
    assert not warm.proc.is_alive()


def _age(paths: list[Path]) -> None:
    old = time.time() - 60
    for p in paths:
        os.utime(p, (old, old))


def test_apply_restores_a_hand_edited_or_deleted_config_of_an_unchanged_model(
    fleet: Workspace,
) -> None:
    def run() -> list[dict]:
        result = apply(fleet, Store(fleet.registry_url), executor=LocalExecutor(2))
        assert result.ok, result.to_dict()
        return result.deployed

    assert len(run()) == 3
    configs = sorted((fleet.root / "deploy" / "test").glob("*/config.yaml"))
    _age(configs)  # old enough to be trusted by the cache from now on
    assert run() == []
    cache = json.loads((fleet.state_dir / "cache" / "deploy-configs.json").read_text())
    assert len(cache["entries"]) == 3
    edited, deleted = configs[0], configs[1]
    good = edited.read_text()
    cfg = yaml.safe_load(good)
    cfg["version"] = "0000000000"
    edited.write_text(yaml.safe_dump(cfg, sort_keys=False))
    deleted.unlink()
    again = run()
    assert sorted(d["name"] for d in again) == sorted([edited.parent.name, deleted.parent.name])
    assert edited.read_text() == good
    assert deleted.exists()
    # A cache that cannot be read is rebuilt, never trusted.
    (fleet.state_dir / "cache" / "deploy-configs.json").write_text("{not json")
    _age(configs)
    assert run() == []
    cfg = yaml.safe_load(good)
    cfg["artifact_digest"] = "sha256:" + "0" * 64
    edited.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert [d["name"] for d in run()] == [edited.parent.name]
    assert edited.read_text() == good
