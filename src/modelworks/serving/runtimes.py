"""Model runtimes: load a model folder (metadata.json + model file) and predict on numpy arrays."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from modelworks.errors import ServingError, VerificationError

# Types skops may load although it does not trust them by default: only sklearn/numpy/scipy.
TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.sparse.")

PLATFORMS = {
    "sklearn": "sklearn",
    "onnx": "onnxruntime_onnx",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
}

# The Python package each runtime needs, and how to install it.
_PACKAGES = {
    "sklearn": ("sklearn", "scikit-learn"),
    "onnx": ("onnxruntime", "onnxruntime"),
    "xgboost": ("xgboost", "xgboost"),
    "lightgbm": ("lightgbm", "lightgbm"),
}


class RuntimeNotInstalledError(ServingError):
    """The model's runtime package is missing on this server."""

    status: ClassVar[int] = 503


class Predictor(Protocol):
    def __call__(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class LoadedModel:
    """A model ready to predict, with its metadata and an estimate of its memory size."""

    name: str
    version: str
    digest: str
    runtime: str
    metadata: dict[str, Any]
    predict: Predictor
    size: int
    input_dtype: np.dtype[Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def platform(self) -> str:
        return PLATFORMS.get(self.runtime, self.runtime)


def read_metadata(model_dir: Path) -> dict[str, Any]:
    """Read and check metadata.json of a model folder."""
    path = model_dir / "metadata.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ServingError(f"{path} is missing: the artifact has no model metadata") from None
    except json.JSONDecodeError as exc:
        raise ServingError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or not meta.get("model_file"):
        raise ServingError(f"{path}: field 'model_file' is missing")
    return meta


def check_installed(runtime: str) -> None:
    """Raise RuntimeNotInstalledError when the runtime's package cannot be imported."""
    if runtime not in _PACKAGES:
        raise ServingError(
            f"unknown runtime '{runtime}'; expected one of {', '.join(sorted(_PACKAGES))}"
        )
    module, dist = _PACKAGES[runtime]
    if importlib.util.find_spec(module) is None:
        raise RuntimeNotInstalledError(
            f"runtime {runtime} is not installed on this server (pip install {dist})"
        )


def _load_sklearn(path: Path, allow_pickle: bool) -> Predictor:
    if path.suffix == ".skops":
        import skops.io as sio

        untrusted = sio.get_untrusted_types(file=path)
        refused = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
        if refused:
            raise VerificationError(
                f"{path.name} contains types outside the sklearn/numpy allowlist: "
                f"{', '.join(refused)}; refusing to load it"
            )
        model = sio.load(path, trusted=untrusted)
    elif path.suffix in (".joblib", ".pkl", ".pickle"):
        if not allow_pickle:
            raise VerificationError(
                f"{path.name} is a pickle (joblib) file; the server loads pickles only when "
                "started with allow_pickle=True"
            )
        import joblib

        model = joblib.load(path)
    else:
        raise ServingError(f"{path.name}: sklearn models must be .skops (or trusted .joblib)")
    return model.predict  # type: ignore[no-any-return]


def _load_onnx(path: Path) -> tuple[Predictor, np.dtype[Any]]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    out_name = sess.get_outputs()[0].name
    dtype = np.dtype(np.float64 if inp.type == "tensor(double)" else np.float32)
    if inp.type.startswith("tensor(int64"):
        dtype = np.dtype(np.int64)

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run([out_name], {inp.name: x.astype(dtype, copy=False)})[0])

    return predict, dtype


def _load_xgboost(path: Path) -> Predictor:
    import xgboost as xgb

    booster = xgb.Booster(model_file=str(path))

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(xgb.DMatrix(x)))

    return predict


def _load_lightgbm(path: Path) -> Predictor:
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(path))

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(x))

    return predict


def _dir_size(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())


# A loaded model takes more memory than its files; this factor is a deliberate overestimate.
SIZE_FACTOR = 3
MIN_SIZE = 64 * 1024


def load_model(
    model_dir: Path,
    *,
    name: str,
    version: str,
    digest: str,
    runtime: str,
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load the model in `model_dir` with `runtime` (the one the deploy config names)."""
    check_installed(runtime)
    meta = read_metadata(model_dir)
    if meta.get("runtime", runtime) != runtime:
        raise ServingError(
            f"{model_dir}/metadata.json says runtime '{meta['runtime']}' but the deploy config "
            f"says '{runtime}'"
        )
    path = model_dir / str(meta["model_file"])
    if not path.is_file() or path.parent != model_dir:
        raise ServingError(f"{model_dir}: model_file '{meta['model_file']}' is not in the folder")
    dtype: np.dtype[Any] | None = None
    if runtime == "sklearn":
        predict = _load_sklearn(path, allow_pickle)
    elif runtime == "onnx":
        predict, dtype = _load_onnx(path)
    elif runtime == "xgboost":
        predict = _load_xgboost(path)
    else:
        predict = _load_lightgbm(path)
    size = max(_dir_size(model_dir) * SIZE_FACTOR, MIN_SIZE)
    return LoadedModel(name, version, digest, runtime, meta, predict, size, dtype)
