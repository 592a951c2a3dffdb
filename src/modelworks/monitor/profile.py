"""Reference profile of the training features, stored in each ModelCar as profile.json.

A profile is plain JSON::

    {"format": 1, "n": 1000, "features": [
      {"name": "age", "kind": "numeric", "edges": [18.0, 24.5, ..., 90.0],
       "fractions": [0.1, ...], "missing": 0.0, "mean": 41.2, "std": 12.9,
       "min": 18.0, "max": 90.0, "sample": [18.0, 18.4, ...]},
      {"name": "plan", "kind": "categorical", "missing": 0.0,
       "frequencies": {"basic": 0.61, "pro": 0.39}}]}

Numeric bins are quantile bins: bin i holds [edges[i], edges[i+1]) (the last one is
closed), and `fractions` are the shares of the non-missing training rows per bin.
A numeric feature with at most `bins` distinct values (a flag, a count) is
*discrete*: it also carries `values`, one bin per value, and `edges` are the
midpoints between them. `missing` is the share of NaN/inf/None rows. `sample` is a
stratified sample of the sorted values (one random pick per equal-count stratum,
seeded), rounded to 6 significant digits, for the KS test (empty for discrete
features: their values and fractions stand in for it). Categories keep the
50 most frequent values; the rest are pooled under "__other__".
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from modelworks.errors import DataError

FORMAT = 1
MAX_CATEGORIES = 50
OTHER = "__other__"
NULL = "<null>"
_SAMPLE_DIGITS = 6
_POW10 = np.array([float(f"1e{i}") for i in range(23)])


def build_profile(
    X: Any,
    feature_names: list[str] | None = None,
    *,
    bins: int = 10,
    sample: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Profile each column of X (2-D array or DataFrame) for later drift checks."""
    if bins < 1 or sample < 0:
        raise DataError(f"build_profile: bins must be >= 1 and sample >= 0, got {bins}, {sample}")
    columns, names = split_columns(X, feature_names)
    n = len(columns[0]) if columns else _row_count(X)
    if n == 0:
        raise DataError("cannot profile training data with 0 rows")
    rng = np.random.default_rng(seed)
    features = []
    for name, col in zip(names, columns, strict=True):
        numeric = as_numeric(col)
        if numeric is None:
            features.append(_categorical(name, col))
        else:
            features.append(_numeric(name, numeric, bins, sample, rng))
    return {"format": FORMAT, "n": n, "features": features}


def split_columns(X: Any, feature_names: list[str] | None) -> tuple[list[np.ndarray], list[str]]:
    """Return X's columns as 1-D arrays and their names (given, DataFrame's, or f0..fn)."""
    if hasattr(X, "columns") and not isinstance(X, np.ndarray):
        columns = [_frame_column(X, j) for j in range(len(X.columns))]
        default = [str(c) for c in X.columns]
    else:
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise DataError(f"expected a 2-D array (rows x features), got shape {arr.shape}")
        columns = [arr[:, j] for j in range(arr.shape[1])]
        default = [f"f{j}" for j in range(arr.shape[1])]
    if feature_names is None:
        return columns, default
    if len(feature_names) != len(columns):
        raise DataError(
            f"feature_names has {len(feature_names)} names but the data has {len(columns)} columns"
        )
    return columns, [str(name) for name in feature_names]


def as_numeric(col: np.ndarray) -> np.ndarray | None:
    """Return col as float64 (None/NaN kept as NaN) if every value is a number, else None."""
    kind = col.dtype.kind
    if kind in "iuf":
        return col.astype(np.float64, copy=False)
    if kind != "O":
        return None
    values = col.tolist()
    if not all(_is_number(v) for v in values):
        return None
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def category_key(value: Any) -> str:
    """The string a categorical value is counted under: 3, 3.0 and '3' all count as '3'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NULL
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.integer):
        return str(int(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _row_count(X: Any) -> int:
    return int(np.shape(X)[0]) if np.ndim(X) >= 1 else 0


def _frame_column(frame: Any, j: int) -> np.ndarray:
    series = frame.iloc[:, j] if hasattr(frame, "iloc") else frame[frame.columns[j]]
    if getattr(series.dtype, "kind", "O") in "iuf":
        try:
            return np.asarray(series.to_numpy(dtype="float64", na_value=np.nan))
        except TypeError:
            pass
    return np.asarray(series.to_numpy() if hasattr(series, "to_numpy") else series)


def _is_number(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (bool, np.bool_)):
        return False
    return isinstance(value, (int, float, np.integer, np.floating))


def _numeric(
    name: str, col: np.ndarray, bins: int, sample: int, rng: np.random.Generator
) -> dict[str, Any]:
    finite = np.isfinite(col)
    x = np.sort(col if finite.all() else col[finite])
    n = len(x)
    out: dict[str, Any] = {"name": name, "kind": "numeric"}
    if n == 0:
        none: dict[str, Any] = {
            "edges": [],
            "fractions": [],
            "mean": None,
            "std": None,
            "min": None,
            "max": None,
        }
        return {**out, **none, "missing": 1.0, "sample": []}
    jumps = np.flatnonzero(x[1:] != x[:-1]) + 1
    if len(jumps) + 1 <= bins:
        out.update(_discrete_bins(x, jumps))
    else:
        out.update(_quantile_bins(x, bins))
    out["missing"] = (len(col) - n) / len(col)
    mean = float(x.mean())
    out["mean"] = mean
    centered = x - mean
    out["std"] = math.sqrt(float(np.dot(centered, centered)) / n)
    out["min"] = float(x[0])
    out["max"] = float(x[-1])
    # A discrete feature's sample is implied by its values and fractions.
    out["sample"] = [] if "values" in out else _round_sig(_stratified(x, sample, rng)).tolist()
    return out


def _discrete_bins(x: np.ndarray, jumps: np.ndarray) -> dict[str, Any]:
    starts = np.concatenate(([0], jumps))
    values = x[starts]
    counts = np.diff(np.concatenate((starts, [len(x)])))
    mids = (values[:-1] + values[1:]) / 2
    edges = np.concatenate((values[:1], mids, values[-1:]))
    return {
        "edges": edges.tolist(),
        "values": values.tolist(),
        "fractions": (counts / len(x)).tolist(),
    }


def _quantile_bins(x: np.ndarray, bins: int) -> dict[str, Any]:
    n = len(x)
    pos = np.arange(bins + 1) * ((n - 1) / bins)
    lo = pos.astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    raw = x[lo] + (x[hi] - x[lo]) * (pos - lo)
    # A point mass (many zeros, say) repeats an edge; give it a bin of its own.
    heavy = raw[:-1][raw[:-1] == raw[1:]]
    after = np.searchsorted(x, heavy, side="right")
    edges = np.sort(np.concatenate((raw, x[after[after < n]])) if len(heavy) else raw)
    edges = edges[np.concatenate(([True], edges[1:] != edges[:-1]))]
    cuts = np.searchsorted(x, edges[1:-1], side="left")
    counts = np.diff(np.concatenate(([0], cuts, [n])))
    return {"edges": edges.tolist(), "fractions": (counts / n).tolist()}


def _stratified(x: np.ndarray, sample: int, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    if n <= sample or sample == 0:
        return x[:sample]
    bounds = (np.arange(sample + 1) * n) // sample
    picks = bounds[:-1] + np.floor(rng.random(sample) * np.diff(bounds)).astype(np.intp)
    return x[picks]


def _round_sig(x: np.ndarray) -> np.ndarray:
    """Round to 6 significant digits so the JSON stays short (m / 10**k prints as m e-k)."""
    out = x.astype(np.float64, copy=True)
    nz = out != 0
    if not nz.any():
        return out
    v = out[nz]
    places = np.clip(_SAMPLE_DIGITS - 1 - np.floor(np.log10(np.abs(v))), -22, 22).astype(int)
    up = places >= 0
    scale = _POW10[np.abs(places)]
    v = np.where(up, np.round(v * scale) / scale, np.round(v / scale) * scale)
    out[nz] = v
    return out


def _categorical(name: str, col: np.ndarray) -> dict[str, Any]:
    counts = Counter(category_key(v) for v in col.tolist())
    n = len(col)
    missing = counts.get(NULL, 0) / n
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = ranked[:MAX_CATEGORIES]
    frequencies = {key: count / n for key, count in kept}
    rest = sum(count for _, count in ranked[MAX_CATEGORIES:])
    if rest:
        frequencies[OTHER] = frequencies.get(OTHER, 0.0) + rest / n
    return {"name": name, "kind": "categorical", "missing": missing, "frequencies": frequencies}
