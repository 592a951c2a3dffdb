"""Training profiles and drift reports on known distributions."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
import pytest

from modelworks.errors import DataError
from modelworks.monitor.drift import DriftReport, drift_report, ks, psi
from modelworks.monitor.profile import OTHER, build_profile


@pytest.fixture
def train() -> np.ndarray:
    return np.random.default_rng(0).normal(loc=5.0, scale=2.0, size=(2000, 3))


def _fresh(size: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc=5.0, scale=2.0, size=(size, 3))


def test_numeric_profile_has_quantile_bins(train: np.ndarray) -> None:
    profile = build_profile(train, ["a", "b", "c"])
    assert profile["format"] == 1
    assert profile["n"] == 2000
    feature = profile["features"][0]
    assert feature["name"] == "a"
    assert feature["kind"] == "numeric"
    assert len(feature["edges"]) == len(feature["fractions"]) + 1 == 11
    assert feature["edges"] == sorted(set(feature["edges"]))
    assert sum(feature["fractions"]) == pytest.approx(1.0)
    assert all(f == pytest.approx(0.1, abs=0.002) for f in feature["fractions"])
    assert feature["mean"] == pytest.approx(5.0, abs=0.15)
    assert feature["std"] == pytest.approx(2.0, abs=0.15)
    assert feature["min"] == feature["edges"][0] == float(train[:, 0].min())
    assert len(feature["sample"]) == 500
    assert build_profile(train, sample=0)["features"][0]["sample"] == []
    assert feature["sample"] == sorted(feature["sample"])


def test_profile_is_deterministic_plain_json(train: np.ndarray) -> None:
    first = json.dumps(build_profile(train))
    assert first == json.dumps(build_profile(train.copy()))
    assert json.loads(first)["features"][2]["name"] == "f2"
    assert first != json.dumps(build_profile(train, seed=1))


def test_profile_discrete_missing_and_categorical() -> None:
    flags = np.array([0, 1, 1, 1, np.nan] * 40)
    plans = np.array(["basic", "pro", "basic", None, "basic"] * 40, dtype=object)
    X = np.empty((200, 2), dtype=object)
    X[:, 0], X[:, 1] = flags, plans
    flag, plan = build_profile(X, ["flag", "plan"])["features"]
    assert flag["kind"] == "numeric"
    assert flag["values"] == [0.0, 1.0]
    assert flag["fractions"] == [0.25, 0.75]
    assert flag["missing"] == pytest.approx(0.2)
    assert plan["kind"] == "categorical"
    assert plan["frequencies"] == {"basic": 0.6, "<null>": 0.2, "pro": 0.2}


def test_profile_caps_many_categories() -> None:
    ids = np.array([f"id{i}" for i in range(500)], dtype=object).reshape(-1, 1)
    feature = build_profile(ids)["features"][0]
    assert len(feature["frequencies"]) == 51
    assert feature["frequencies"][OTHER] == pytest.approx(450 / 500)


def test_profile_rejects_bad_input() -> None:
    with pytest.raises(DataError, match="2-D"):
        build_profile(np.zeros(10))
    with pytest.raises(DataError, match="0 rows"):
        build_profile(np.zeros((0, 3)))
    with pytest.raises(DataError, match="2 names but the data has 3 columns"):
        build_profile(np.zeros((5, 3)), ["a", "b"])


def test_same_distribution_does_not_drift(train: np.ndarray) -> None:
    profile = build_profile(train)
    served = _fresh(1000)
    assert psi(profile["features"][0], served[:, 0]) < 0.05
    _, pvalue = ks(profile["features"][0], served[:, 0])
    assert pvalue > 0.05
    report = drift_report(profile, served)
    assert not report.drifted
    assert report.score < 0.1
    assert report.n == 1000
    assert [f.name for f in report.features] == ["f0", "f1", "f2"]


def test_shifted_distribution_drifts(train: np.ndarray) -> None:
    profile = build_profile(train)
    served = _fresh(1000)
    served[:, 1] += 2.0  # mean + 1 std
    report = drift_report(profile, served)
    assert report.drifted
    shifted = report.features[1]
    assert shifted.drifted
    assert shifted.psi >= 0.2
    assert shifted.ks_pvalue is not None
    assert shifted.ks_pvalue < 1e-6
    assert report.score == shifted.psi
    assert not report.features[0].drifted


def test_categorical_frequency_change_drifts() -> None:
    rng = np.random.default_rng(3)
    train = rng.choice(["a", "b", "c"], p=[0.6, 0.3, 0.1], size=(2000, 1)).astype(object)
    profile = build_profile(train)
    same = rng.choice(["a", "b", "c"], p=[0.6, 0.3, 0.1], size=(1000, 1)).astype(object)
    moved = rng.choice(["a", "b", "c"], p=[0.2, 0.3, 0.5], size=(1000, 1)).astype(object)
    assert not drift_report(profile, same).drifted
    report = drift_report(profile, moved)
    assert report.drifted
    assert report.features[0].ks_stat is None
    unseen = np.array([["a"], ["zzz"]] * 100, dtype=object)
    assert psi(profile["features"][0], unseen[:, 0]) > 1.0


def test_out_of_range_discrete_values_drift() -> None:
    profile = build_profile(np.array([[0.0], [1.0]] * 200))
    assert psi(profile["features"][0], np.array([0.0, 1.0] * 100)) < 0.01
    assert psi(profile["features"][0], np.array([0.0, 1.0, 2.0, 2.0] * 50)) > 1.0
    stat, _ = ks(profile["features"][0], np.array([1.0] * 200))
    assert stat == pytest.approx(0.5, abs=0.01)


def test_empty_bins_do_not_give_infinity(train: np.ndarray) -> None:
    value = psi(build_profile(train)["features"][0], np.full(500, 1000.0))
    assert np.isfinite(value)
    assert value > 1.0


def test_few_samples_is_not_drift(train: np.ndarray) -> None:
    report = drift_report(build_profile(train), _fresh(42) + 10.0)
    assert report == DriftReport(0.0, False, 42, [], 0.2, "only 42 samples, need 100")
    assert json.loads(json.dumps(report.to_dict()))["reason"] == "only 42 samples, need 100"


def test_empty_log_is_too_few_samples(train: np.ndarray) -> None:
    report = drift_report(build_profile(train), np.zeros((0, 0)))
    assert report.reason == "only 0 samples, need 100"
    assert not report.drifted


def test_dataframe_columns_are_matched_by_name() -> None:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"x": rng.normal(size=300), "plan": rng.choice(["a", "b"], 300)})
    profile = build_profile(frame)
    assert [f["kind"] for f in profile["features"]] == ["numeric", "categorical"]
    report = drift_report(profile, frame[["plan", "x"]])
    assert [f.name for f in report.features] == ["x", "plan"]
    assert report.score < 0.01


def test_wrong_column_count_is_a_data_error(train: np.ndarray) -> None:
    with pytest.raises(DataError, match="2 columns but the profile expects 3 features"):
        drift_report(build_profile(train), np.zeros((200, 2)))
    with pytest.raises(DataError, match="expected format 1"):
        drift_report({"features": []}, np.zeros((200, 2)))


def test_numeric_feature_given_strings_is_a_data_error(train: np.ndarray) -> None:
    with pytest.raises(DataError, match="feature 'f0' is numeric"):
        psi(build_profile(train)["features"][0], np.array(["x", "y"], dtype=object))


def test_report_to_dict_is_json(train: np.ndarray) -> None:
    data = drift_report(build_profile(train), _fresh(300)).to_dict()
    assert json.loads(json.dumps(data))["features"][0]["name"] == "f0"
    assert set(data) == {"score", "drifted", "n", "features", "threshold", "reason"}


def test_profile_cost_is_about_a_millisecond() -> None:
    X = np.random.default_rng(5).normal(size=(1000, 10))
    build_profile(X)
    best = min(_timed(lambda: build_profile(X), 20) for _ in range(5))
    print(f"build_profile 1000x10: {best * 1e3:.2f} ms")
    # Generous bound: the machine is shared; ~1 ms is typical.
    assert best < 0.01


def _timed(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number
