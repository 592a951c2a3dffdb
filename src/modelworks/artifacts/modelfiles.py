"""Writing a trained model's files for its runtime, with the metadata the server reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from modelworks.errors import PipelineError

MODEL_FILES = {"sklearn": "model.skops", "onnx": "model.onnx"}
# The file suffixes the server loads for each runtime, preferred first (serving/runtimes.py).
LOADABLE_SUFFIXES = {
    "sklearn": (".skops", ".joblib", ".pkl", ".pickle"),
    "onnx": (".onnx",),
    "xgboost": (".json", ".ubj", ".model"),
    "lightgbm": (".txt", ".model"),
}
# Files the line itself writes next to the model files.
LINE_FILES = frozenset({"metadata.json", "metrics.json", "profile.json", "sbom.json"})
_DTYPES = {"f": "FP64", "i": "INT64", "u": "UINT64", "b": "BOOL", "O": "BYTES", "U": "BYTES"}


def datatype(arr: np.ndarray) -> str:
    """The Open Inference Protocol datatype of a numpy array."""
    if arr.dtype == np.float32:
        return "FP32"
    if arr.dtype == np.int32:
        return "INT32"
    return _DTYPES.get(arr.dtype.kind, "BYTES")


def sample_of(data: Any) -> tuple[np.ndarray | None, list[str] | None]:
    """The training features (and their names) if prepare() returned a dict with X_train."""
    if isinstance(data, dict) and "X_train" in data:
        X = data["X_train"]
        names = data.get("feature_names")
        if names is None and hasattr(X, "columns"):
            names = [str(c) for c in X.columns]
        return np.asarray(X), list(names) if names is not None else None
    return None, None


def save_model(runtime: str, model: Any, out_dir: Path, data: Any) -> dict[str, Any]:
    """Save `model` in its runtime's format into out_dir; return metadata.json's content."""
    files, meta = model_files(runtime, model, data)
    for name, content in files.items():
        (out_dir / name).write_bytes(content)
    return meta


def model_files(runtime: str, model: Any, data: Any) -> tuple[dict[str, bytes], dict[str, Any]]:
    """`model` in its runtime's format, in memory: ({file name: bytes}, metadata.json's content)."""
    X, names = sample_of(data)
    if runtime == "sklearn":
        import skops.io as sio

        content = sio.dumps(model)
        in_dtype = "FP64"
    elif runtime == "onnx":
        if X is None:
            raise PipelineError("runtime onnx needs prepare() to return a dict with 'X_train'")
        try:
            from skl2onnx import to_onnx
        except ImportError:
            raise PipelineError(
                "runtime onnx is not installed (pip install onnxruntime skl2onnx)"
            ) from None
        onx = to_onnx(model, X[:1].astype(np.float32), target_opset={"": 17, "ai.onnx.ml": 3})
        content = onx.SerializeToString()
        in_dtype = "FP32"
    else:
        raise PipelineError(
            f"runtime {runtime} is not installed in the line (supported: sklearn, onnx)"
        )
    meta: dict[str, Any] = {"runtime": runtime, "model_file": MODEL_FILES[runtime]}
    if X is not None:
        y = np.asarray(model.predict(X[:2]))
        meta["inputs"] = [{"name": "input-0", "datatype": in_dtype, "shape": [-1, int(X.shape[1])]}]
        meta["outputs"] = [{"name": "output-0", "datatype": datatype(y), "shape": [-1]}]
        meta["feature_names"] = names or [f"f{i}" for i in range(X.shape[1])]
    return {MODEL_FILES[runtime]: content}, meta


def custom_model_file(runtime: str, out_dir: Path, returned: Any) -> str:
    """The model file a custom save() wrote: the name it returned, else the one loadable file.

    Raises PipelineError when serving could not load what was saved, so nothing unloadable
    is ever registered or deployed.
    """
    suffixes = LOADABLE_SUFFIXES.get(runtime)
    if suffixes is None:
        raise PipelineError(
            f"runtime {runtime} cannot be served (supported: {', '.join(LOADABLE_SUFFIXES)})"
        )
    wanted = f"a {runtime} model file ({', '.join(suffixes)})"
    written = sorted(p.name for p in out_dir.iterdir() if p.is_file() and p.name not in LINE_FILES)
    if isinstance(returned, (str, Path)) and str(returned):
        name = Path(returned).name
        if name not in written or Path(returned).parent not in (Path("."), out_dir):
            raise PipelineError(
                f"save() returned {str(returned)!r}, which is not a file it wrote in the output "
                f"folder (found: {', '.join(written) or 'nothing'})"
            )
        if not name.endswith(suffixes):
            raise PipelineError(f"save() returned {name!r}, but serving loads {wanted}")
        return name
    for suffix in suffixes:
        found = [n for n in written if n.endswith(suffix)]
        if len(found) == 1:
            return found[0]
        if found:
            raise PipelineError(
                f"save() wrote several {suffix} files ({', '.join(found)}): return the model "
                "file's name from save() to say which one serving loads"
            )
    raise PipelineError(
        f"save() wrote no file serving can load: expected {wanted} in the output folder, "
        f"found {', '.join(written) or 'nothing'}"
    )


def write_json(path: Path, payload: Any, *, compact: bool = False) -> None:
    """Write JSON; `compact` for large machine-read files (a profile holds thousands of floats)."""
    path.write_bytes(json_bytes(payload, compact=compact))


def json_bytes(payload: Any, *, compact: bool = False) -> bytes:
    """The bytes `write_json` writes."""
    if compact:
        return json.dumps(payload, separators=(",", ":"), default=float).encode()
    return json.dumps(payload, indent=2, sort_keys=True, default=float).encode()
