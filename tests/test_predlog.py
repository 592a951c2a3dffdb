"""The sampled prediction log: real Parquet files under a temporary folder."""

from __future__ import annotations

import gc
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from modelworks.errors import DataError
from modelworks.monitor.drift import drift_report
from modelworks.monitor.predlog import PredictionLog, logged_models, read_log
from modelworks.monitor.profile import build_profile


def _parts(root: Path) -> list[Path]:
    return sorted(root.rglob("part-*.parquet"))


def _wait_for_rows(root: Path, model: str, rows: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, _, info = read_log(root, model)
        if info["rows"] >= rows:
            return int(info["rows"])
        time.sleep(0.02)
    return int(read_log(root, model)[2]["rows"])


def test_round_trip_from_several_threads(tmp_path: Path) -> None:
    names = ["age", "income", "score"]
    log = PredictionLog(tmp_path, flush_rows=10_000, flush_seconds=60)

    def serve(worker: int) -> None:
        for i in range(200):
            row = float(worker * 1000 + i)
            inputs = np.array([[row, row + 0.5, -row], [row, 1.0, 2.0]])
            log.append("acme/churn", "v1", inputs, np.array([row, -row]), feature_names=names)

    threads = [threading.Thread(target=serve, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _parts(tmp_path) == []
    log.flush()
    X, got_names, info = read_log(tmp_path, "acme/churn")
    assert got_names == names
    assert info == {"rows": 1600, "versions": ["v1"], "files": 1, "skipped": 0}
    expected = []
    for w in range(4):
        for i in range(200):
            row = float(w * 1000 + i)
            expected += [(row, row + 0.5, -row), (row, 1.0, 2.0)]
    assert sorted(map(tuple, X.tolist())) == sorted(expected)
    table = pq.read_table(_parts(tmp_path)[0])
    assert table.column_names == ["ts", "model", "version", "age", "income", "score", "output"]
    assert set(table.column("model").to_pylist()) == {"acme/churn"}
    ages, outputs = table.column("age").to_pylist(), table.column("output").to_pylist()
    assert {out for age, out in zip(ages, outputs, strict=True) if age == 3005.0} == {
        3005.0,
        -3005.0,
    }
    log.close()


def test_flushes_on_time(tmp_path: Path) -> None:
    with PredictionLog(tmp_path, flush_rows=10_000, flush_seconds=0.1) as log:
        log.append("m", "v1", np.ones((3, 2)), np.zeros(3))
        assert _wait_for_rows(tmp_path, "m", 3) == 3


def test_flushes_on_size(tmp_path: Path) -> None:
    with PredictionLog(tmp_path, flush_rows=10, flush_seconds=60) as log:
        log.append("m", "v1", np.ones((4, 2)), np.zeros(4))
        time.sleep(0.2)
        assert _parts(tmp_path) == []
        log.append("m", "v1", np.ones((6, 2)), np.zeros(6))
        assert _wait_for_rows(tmp_path, "m", 10) == 10


def test_close_and_garbage_collection_write_the_rest(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "a", flush_seconds=60)
    log.append("m", "v1", np.ones((2, 2)), np.zeros(2))
    log.close()
    assert read_log(tmp_path / "a", "m")[2]["rows"] == 2
    with pytest.raises(DataError, match="is closed"):
        log.append("m", "v1", np.ones((2, 2)), np.zeros(2))
    dropped = PredictionLog(tmp_path / "b", flush_seconds=60)
    dropped.append("m", "v1", np.ones((5, 2)), np.zeros(5))
    del dropped
    gc.collect()
    assert read_log(tmp_path / "b", "m")[2]["rows"] == 5


def test_since_version_and_limit_filters(tmp_path: Path) -> None:
    with PredictionLog(tmp_path, flush_seconds=60) as log:
        log.append("m", "v1", np.full((5, 2), 1.0), np.zeros(5))
        log.flush()
        time.sleep(0.01)
        cut = datetime.now(UTC)
        time.sleep(0.01)
        log.append("m", "v2", np.full((3, 2), 2.0), np.zeros(3))
    X, _, info = read_log(tmp_path, "m", since=cut)
    assert X.tolist() == [[2.0, 2.0]] * 3
    assert info["versions"] == ["v2"]
    X, _, info = read_log(tmp_path, "m", version="v1")
    assert X.tolist() == [[1.0, 1.0]] * 5
    assert info["rows"] == 5
    X, _, _ = read_log(tmp_path, "m", limit=4)
    assert X[:, 0].tolist() == [1.0, 2.0, 2.0, 2.0]
    X, _, info = read_log(tmp_path, "m", version="v9")
    assert X.shape[0] == 0
    assert info["rows"] == 0


def test_empty_log_has_zero_rows(tmp_path: Path) -> None:
    X, names, info = read_log(tmp_path / "nothing", "m")
    assert X.shape[0] == 0
    assert names == []
    assert info["rows"] == 0
    assert logged_models(tmp_path / "nothing") == []


def test_leftover_temp_and_broken_files_are_not_read(tmp_path: Path) -> None:
    with PredictionLog(tmp_path, flush_seconds=60) as log:
        log.append("m", "v1", np.ones((2, 2)), np.zeros(2))
    day = _parts(tmp_path)[0].parent
    (day / ".part-0000.parquet.tmp").write_bytes(b"PAR1 half a file")
    X, _, info = read_log(tmp_path, "m")
    assert X.shape == (2, 2)
    assert info["skipped"] == 0
    (day / "part-broken.parquet").write_bytes(b"not parquet")
    X, _, info = read_log(tmp_path, "m")
    assert X.shape == (2, 2)
    assert info["skipped"] == 1
    assert info["files"] == 1


def test_model_names_are_safe_folders(tmp_path: Path) -> None:
    with PredictionLog(tmp_path, flush_seconds=60) as log:
        for model in ["acme/churn", "..", "a.b/c%d"]:
            log.append(model, "v1", np.ones((1, 1)), np.zeros(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["%2E%2E", "a%2Eb%2Fc%25d", "acme%2Fchurn"]
    assert logged_models(tmp_path) == ["..", "a.b/c%d", "acme/churn"]
    assert read_log(tmp_path, "a.b/c%d")[2]["rows"] == 1
    with pytest.raises(DataError, match="non-empty string"):
        read_log(tmp_path, "")


def test_mixed_inputs_outputs_and_reserved_names(tmp_path: Path) -> None:
    inputs = np.array([[1.5, "gold", True], [2.5, None, False]], dtype=object)
    probs = np.array([[0.2, 0.8], [0.6, 0.4]])
    with PredictionLog(tmp_path, flush_seconds=60) as log:
        log.append("m", "v1", inputs, probs, feature_names=["version", "plan", "feature.version"])
    X, names, _ = read_log(tmp_path, "m")
    assert names == ["version", "plan", "feature.version"]
    assert X.tolist() == [[1.5, "gold", True], [2.5, None, False]]
    table = pq.read_table(_parts(tmp_path)[0])
    assert table.column_names[3:6] == ["feature0.feature.version", "plan", "feature.version"]
    assert table.column("output").to_pylist() == [[0.2, 0.8], [0.6, 0.4]]


def test_bad_appends_are_data_errors(tmp_path: Path) -> None:
    with PredictionLog(tmp_path, flush_seconds=60) as log:
        with pytest.raises(DataError, match="same rows"):
            log.append("m", "v1", np.ones((3, 2)), np.zeros(2))
        with pytest.raises(DataError, match="2 feature names for 3 input columns"):
            log.append("m", "v1", np.ones((1, 3)), np.zeros(1), feature_names=["a", "b"])
        with pytest.raises(DataError, match="non-empty strings"):
            log.append("m", "v1", np.ones((1, 2)), np.zeros(1), feature_names=["a", 2])
        with pytest.raises(DataError, match="duplicate feature names"):
            log.append("m", "v1", np.ones((1, 2)), np.zeros(1), feature_names=["a", "a"])
    assert _parts(tmp_path) == []


def test_feature_change_keeps_newest_schema(tmp_path: Path) -> None:
    with PredictionLog(tmp_path, flush_seconds=60) as log:
        log.append("m", "v1", np.ones((2, 2)), np.zeros(2), feature_names=["a", "b"])
        log.flush()
        log.append("m", "v2", np.ones((3, 3)), np.zeros(3), feature_names=["a", "b", "c"])
    X, names, info = read_log(tmp_path, "m")
    assert names == ["a", "b", "c"]
    assert X.shape == (3, 3)
    assert info["skipped"] == 1


def test_logged_inputs_feed_drift(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    profile = build_profile(rng.normal(size=(1000, 2)), ["a", "b"])
    with PredictionLog(tmp_path, flush_seconds=60) as log:
        served = rng.normal(size=(300, 2)) + np.array([0.0, 1.0])
        log.append("m", "v1", served, np.zeros(300), feature_names=["a", "b"])
    X, _, _ = read_log(tmp_path, "m")
    report = drift_report(profile, X)
    assert [f.drifted for f in report.features] == [False, True]


def test_append_is_cheap(tmp_path: Path) -> None:
    row, out, names = np.ones((1, 10)), np.zeros(1), [f"c{i}" for i in range(10)]
    with PredictionLog(tmp_path, flush_rows=100_000, flush_seconds=60) as log:
        log.append("m", "v1", row, out, feature_names=names)
        calls = 5000
        start = time.perf_counter()
        for _ in range(calls):
            log.append("m", "v1", row, out, feature_names=names)
        per_call = (time.perf_counter() - start) / calls
        start = time.perf_counter()
        log.flush()
        per_row_flush = (time.perf_counter() - start) / calls
    print(f"append: {per_call * 1e6:.1f} us/call; flush: {per_row_flush * 1e6:.1f} us/row")
    assert per_call < 50e-6
