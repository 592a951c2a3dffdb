"""Drift of served inputs against a training profile: PSI per feature, KS for numbers.

The report's `score` is the largest PSI over the features (the worst feature
decides); the report is `drifted` when that score reaches the threshold (0.2 by
default, the usual "significant shift" line for PSI). KS statistics and p-values
are reported alongside for numeric features but do not decide.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from modelworks.errors import DataError
from modelworks.monitor.profile import FORMAT, OTHER, as_numeric, category_key, split_columns

EPSILON = 1e-4


@dataclass
class FeatureDrift:
    """Drift of one feature."""

    name: str
    psi: float
    ks_stat: float | None
    ks_pvalue: float | None
    drifted: bool


@dataclass
class DriftReport:
    """Drift of a batch of served inputs; score is the largest per-feature PSI."""

    score: float
    drifted: bool
    n: int
    features: list[FeatureDrift] = field(default_factory=list)
    threshold: float = 0.2
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


def psi(feature_profile: dict[str, Any], values: Any) -> float:
    """Population stability index of values against the profile's bins or categories."""
    if feature_profile.get("kind") == "categorical":
        expected, actual = _categorical_shares(feature_profile, values)
    else:
        expected, actual = _numeric_shares(feature_profile, values)
    k = len(expected)
    e = (expected + EPSILON) / (1.0 + EPSILON * k)
    a = (actual + EPSILON) / (1.0 + EPSILON * k)
    return float(np.sum((a - e) * np.log(a / e)))


def ks(feature_profile: dict[str, Any], values: Any) -> tuple[float, float]:
    """Two-sample KS test of the profile's sample against values: (statistic, p-value)."""
    name = feature_profile.get("name", "?")
    if feature_profile.get("kind") != "numeric":
        raise DataError(f"feature '{name}' is {feature_profile.get('kind')}: KS needs a number")
    x = _as_floats(feature_profile, values)
    x = x[np.isfinite(x)]
    reference = _reference_sample(feature_profile)
    if len(x) == 0 or len(reference) == 0:
        raise DataError(
            f"feature '{name}': KS needs values on both sides, got {len(reference)} "
            f"reference and {len(x)} served finite values"
        )
    with warnings.catch_warnings():
        # scipy falls back from the exact to the asymptotic p-value with a warning.
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ks_2samp(reference, x, method="asymp")  # exact is O(n·m): too slow per pass
    return float(result.statistic), float(result.pvalue)


def drift_report(
    profile: dict[str, Any], X: Any, *, psi_threshold: float = 0.2, min_samples: int = 100
) -> DriftReport:
    """Compare served inputs X (rows x features, in the profile's order) with a profile."""
    features = _profile_features(profile)
    n = len(X)
    # An empty log reads back as a 0 x 0 array: that is too few samples, not a shape error.
    columns = _columns_for(features, X) if n else []
    if n < min_samples:
        reason = f"only {n} samples, need {min_samples}"
        return DriftReport(0.0, False, n, [], psi_threshold, reason)
    results = [
        _feature_drift(fp, col, psi_threshold) for fp, col in zip(features, columns, strict=True)
    ]
    score = max((r.psi for r in results), default=0.0)
    return DriftReport(score, score >= psi_threshold, n, results, psi_threshold)


def _feature_drift(fp: dict[str, Any], col: np.ndarray, threshold: float) -> FeatureDrift:
    value = psi(fp, col)
    stat = pvalue = None
    if fp.get("kind") == "numeric" and len(_reference_sample(fp)):
        x = _as_floats(fp, col)
        if np.isfinite(x).any():
            stat, pvalue = ks(fp, x)
    return FeatureDrift(fp["name"], value, stat, pvalue, value >= threshold)


def _reference_sample(fp: dict[str, Any], size: int = 500) -> np.ndarray:
    """The profile's KS sample; for a discrete feature, rebuilt from values and fractions."""
    if fp.get("sample"):
        return np.asarray(fp["sample"], dtype=np.float64)
    if not fp.get("values"):
        return np.zeros(0)
    repeats = np.round(np.asarray(fp["fractions"], dtype=np.float64) * size).astype(np.intp)
    return np.repeat(np.asarray(fp["values"], dtype=np.float64), repeats)


def _profile_features(profile: dict[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(profile, dict) or profile.get("format") != FORMAT:
        got = profile.get("format") if isinstance(profile, dict) else type(profile).__name__
        raise DataError(f"not a feature profile: expected format {FORMAT}, got {got!r}")
    features = profile.get("features")
    if not isinstance(features, list):
        raise DataError("feature profile has no 'features' list")
    return features


def _columns_for(features: list[dict[str, Any]], X: Any) -> list[np.ndarray]:
    columns, names = split_columns(X, None)
    wanted = [str(fp.get("name")) for fp in features]
    if hasattr(X, "columns") and names != wanted and set(wanted) <= set(names):
        by_name = dict(zip(names, columns, strict=True))
        return [by_name[name] for name in wanted]
    if len(columns) != len(features):
        shown = ", ".join(wanted[:8]) + (", ..." if len(wanted) > 8 else "")
        raise DataError(
            f"served inputs have {len(columns)} columns but the profile expects "
            f"{len(features)} features ({shown})"
        )
    return columns


def _as_floats(fp: dict[str, Any], values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    x = as_numeric(arr)
    if x is None:
        raise DataError(
            f"feature '{fp.get('name', '?')}' is numeric in the profile but the served "
            f"values are not numbers (dtype {arr.dtype})"
        )
    return x


def _numeric_shares(fp: dict[str, Any], values: Any) -> tuple[np.ndarray, np.ndarray]:
    x = _as_floats(fp, values)
    if len(x) == 0:
        raise DataError(f"feature '{fp.get('name', '?')}': no values to compare")
    finite = np.isfinite(x)
    xf = x[finite]
    fractions = np.asarray(fp.get("fractions") or [], dtype=np.float64)
    if "values" in fp:
        counts = _discrete_counts(np.asarray(fp["values"], dtype=np.float64), xf)
        fractions = np.r_[fractions, 0.0]
    else:
        edges = np.asarray(fp.get("edges") or [], dtype=np.float64)
        bins = max(len(fractions), 1)
        idx = np.searchsorted(edges[1:-1], xf, side="right")
        counts = np.bincount(idx, minlength=bins).astype(np.float64)
        fractions = fractions if len(fractions) else np.zeros(1)
    missing_e = float(fp.get("missing") or 0.0)
    expected = np.r_[fractions * (1.0 - missing_e), missing_e]
    actual = np.r_[counts, len(x) - len(xf)] / len(x)
    return expected, actual


def _discrete_counts(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Counts per known value, plus one last count for values never seen in training."""
    idx = np.minimum(np.searchsorted(values, x), len(values) - 1)
    known = values[idx] == x
    counts = np.bincount(idx[known], minlength=len(values)).astype(np.float64)
    return np.concatenate((counts, [float(len(x) - known.sum())]))


def _categorical_shares(fp: dict[str, Any], values: Any) -> tuple[np.ndarray, np.ndarray]:
    frequencies: dict[str, float] = dict(fp.get("frequencies") or {})
    frequencies.setdefault(OTHER, 0.0)
    keys = list(frequencies)
    arr = np.asarray(values, dtype=object).reshape(-1)
    if len(arr) == 0:
        raise DataError(f"feature '{fp.get('name', '?')}': no values to compare")
    counts = Counter(category_key(v) for v in arr.tolist())
    known = {key: counts.get(key, 0) for key in keys}
    known[OTHER] += sum(c for key, c in counts.items() if key not in frequencies)
    expected = np.array([frequencies[key] for key in keys], dtype=np.float64)
    actual = np.array([known[key] for key in keys], dtype=np.float64) / len(arr)
    if not math.isclose(expected.sum(), 1.0, abs_tol=1e-6) and expected.sum() > 0:
        expected = expected / expected.sum()
    return expected, actual
