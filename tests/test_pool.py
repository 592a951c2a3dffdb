"""The worker pool: results as they finish, a stuck job killed, a dead worker replaced."""

from __future__ import annotations

import os
import time

from modelworks.runs.pool import ProcessPool


def _timed(job: dict) -> dict:
    started = time.time()
    if job.get("sleep"):
        time.sleep(job["sleep"])
    if job.get("die"):
        os._exit(3)
    return {
        "run_id": job["run_id"],
        "model": job["model"],
        "status": "succeeded",
        "started": started,
        "pid": os.getpid(),
    }


def _jobs(n: int, **extra: object) -> list[dict]:
    return [{"run_id": i, "model": f"m{i}", **extra} for i in range(n)]


def test_no_job_goes_out_before_the_caller_took_the_last_result() -> None:
    """A kill then leaves at most one packaged-but-unrecorded run per worker (test_faults)."""
    handled_at: list[float] = []
    results = []
    for r in ProcessPool(1, _timed).run(_jobs(3, sleep=0.05)):
        results.append(r)
        time.sleep(0.3)  # the caller records the result
        handled_at.append(time.time())
    assert [r["run_id"] for r in results] == [0, 1, 2]
    for k in range(2):
        assert results[k + 1]["started"] >= handled_at[k] - 0.01


def test_a_stuck_job_times_out_and_the_rest_still_run() -> None:
    jobs = [{"run_id": 0, "model": "stuck", "sleep": 30}, *_jobs(3)[1:]]
    t = time.monotonic()
    results = {r["run_id"]: r for r in ProcessPool(2, _timed, timeout=1.0).run(jobs)}
    assert time.monotonic() - t < 15
    assert results[0]["status"] == "failed"
    assert "timed out after 1s" in results[0]["error"]
    assert all(results[i]["status"] == "succeeded" for i in (1, 2))


def test_a_dying_worker_fails_its_job_only_and_is_replaced() -> None:
    jobs = [{"run_id": 0, "model": "dies", "die": True}, *_jobs(4)[1:]]
    results = {r["run_id"]: r for r in ProcessPool(1, _timed).run(jobs)}
    assert results[0]["status"] == "failed"
    assert "worker process died (exit code 3)" in results[0]["error"]
    assert results[0].get("retryable") is True
    assert sorted(i for i, r in results.items() if r["status"] == "succeeded") == [1, 2, 3]
