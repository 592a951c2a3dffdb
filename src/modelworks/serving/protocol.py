"""Open Inference Protocol (KServe v2) tensors: JSON request inputs to numpy and back."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from modelworks.errors import ServingError, did_you_mean
from modelworks.serving._json import describe, parse_json

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_NUMERIC = {k for k in DTYPES if k != "BYTES"}


class InferenceRequestError(ServingError):
    """The request body does not follow the protocol or does not fit the model."""


def datatype_of(arr: np.ndarray) -> str:
    """The protocol datatype name of a numpy array."""
    kind = arr.dtype.kind
    if kind in "OUS":
        return "BYTES"
    if kind == "b":
        return "BOOL"
    prefix = {"f": "FP", "i": "INT", "u": "UINT"}.get(kind)
    if prefix is None:
        raise ServingError(f"model returned an array of unsupported dtype {arr.dtype}")
    return f"{prefix}{arr.dtype.itemsize * 8}"


_FIELDS = ("name", "shape", "datatype", "data")
_FIELD_SET = frozenset(_FIELDS)
MAX_DIMS = 32  # numpy allows 64; no model input needs more than a handful
MAX_NAME = 256


def parse_request(body: bytes) -> dict[str, Any]:
    """Parse an inference request body; raise a clear error on bad JSON or a wrong shape."""
    req = parse_json(body)
    if not isinstance(req, dict):
        raise InferenceRequestError("request body must be a JSON object with an 'inputs' list")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InferenceRequestError(
            f"request field 'inputs' must be a non-empty list of tensors, got {describe(inputs)}"
        )
    if "id" in req and not isinstance(req["id"], str):
        raise InferenceRequestError(
            f"request field 'id' must be a string, got {describe(req['id'])}"
        )
    if "parameters" in req and not isinstance(req["parameters"], dict):
        raise InferenceRequestError(
            f"request field 'parameters' must be an object, got {describe(req['parameters'])}"
        )
    req["outputs"] = _output_names(req.get("outputs"))
    return req


def _output_names(outputs: Any) -> list[str]:
    """The names a request's 'outputs' asks for: a list of {"name": ...} (or of names)."""
    if outputs is None:
        return []
    if not isinstance(outputs, list):
        raise InferenceRequestError(
            f"request field 'outputs' must be a list of {{\"name\": ...}} objects, "
            f"got {describe(outputs)}"
        )
    names = []
    for o in outputs:
        name = o.get("name") if isinstance(o, dict) else o
        if not isinstance(name, str):
            raise InferenceRequestError(
                f"each entry of 'outputs' must be an object with a string 'name', got {describe(o)}"
            )
        names.append(name)
    return names


def _fmt(shape: list[int] | tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _check_shape(name: str, shape: Any) -> list[int]:
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(type(s) is int and 0 <= s < 2**63 for s in shape)
    ):
        raise InferenceRequestError(
            f"{name}: 'shape' must be a list of at most {MAX_DIMS} non-negative integers, "
            f"got {describe(shape)}"
        )
    return shape


def _check_fields(tensor: Any) -> tuple[str, list[int], str, Any]:
    if not isinstance(tensor, dict):
        raise InferenceRequestError(
            f"each entry of 'inputs' must be an object, got {describe(tensor)}"
        )
    missing = [] if tensor.keys() >= _FIELD_SET else [k for k in _FIELDS if k not in tensor]
    name = tensor.get("name", "?")
    if not isinstance(name, str) or len(name) > MAX_NAME:
        raise InferenceRequestError(
            f"an input's 'name' must be a string of at most {MAX_NAME} characters, "
            f"got {describe(name)}"
        )
    if missing:
        raise InferenceRequestError(f"input {name!r} lacks field(s) {', '.join(missing)}")
    shape = _check_shape(name, tensor["shape"])
    datatype, data = tensor["datatype"], tensor["data"]
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise InferenceRequestError(
            f"{name}: unknown datatype {describe(datatype)}; expected one of {', '.join(DTYPES)}"
        )
    if not isinstance(data, list):
        raise InferenceRequestError(f"{name}: 'data' must be a list, got {describe(data)}")
    return name, shape, datatype, data


def _check_against(name: str, shape: list[int], datatype: str, spec: dict[str, Any]) -> None:
    expected = spec.get("shape")
    if expected is not None and (
        len(expected) != len(shape)
        or any(e not in (-1, None) and e != s for e, s in zip(expected, shape, strict=False))
    ):
        raise InferenceRequestError(
            f"{name} has shape {_fmt(shape)}, model expects "
            f"{_fmt([-1 if e is None else e for e in expected])}"
        )
    want = spec.get("datatype")
    if want and want != datatype and (datatype not in _NUMERIC or want not in _NUMERIC):
        raise InferenceRequestError(f"{name} has datatype {datatype}, model expects {want}")


def decode_input(tensor: Any, specs: dict[str, dict[str, Any]]) -> np.ndarray:
    """One request input as a numpy array of the model's dtype and the declared shape."""
    name, shape, datatype, data = _check_fields(tensor)
    if specs and name not in specs:
        raise InferenceRequestError(
            f"unknown input '{name}'; the model's inputs are {', '.join(sorted(specs))}."
            + did_you_mean(name, set(specs))
        )
    spec = specs.get(name, {})
    _check_against(name, shape, datatype, spec)
    want = spec.get("datatype")
    dtype = DTYPES[want] if want in _NUMERIC and datatype in _NUMERIC else DTYPES[datatype]
    try:
        arr = np.array(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InferenceRequestError(f"{name}: data is not {datatype}: {exc}") from None
    if arr.size != math.prod(shape):
        raise InferenceRequestError(
            f"{name} has {arr.size} values, shape {_fmt(shape)} needs {math.prod(shape)}"
        )
    try:
        return arr.reshape(shape)
    except (ValueError, OverflowError) as exc:
        raise InferenceRequestError(
            f"{name}: cannot shape the data as {_fmt(shape)}: {exc}"
        ) from None


def encode_output(name: str, arr: np.ndarray) -> dict[str, Any]:
    """A response output tensor (flat data) for a numpy array."""
    datatype = datatype_of(arr)
    flat = arr.ravel()
    data: Any = flat.tolist() if datatype == "BYTES" else np.ascontiguousarray(flat)
    if datatype == "BYTES":
        data = [d.decode() if isinstance(d, bytes) else str(d) for d in data]
    elif arr.dtype.kind == "f" and arr.dtype.itemsize == 2:
        data = flat.astype(np.float32)
    return {"name": name, "shape": list(arr.shape), "datatype": datatype, "data": data}
