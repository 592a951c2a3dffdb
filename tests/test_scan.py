"""Unsafe-serialization scanning over real model files (nothing is loaded)."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pytest
import skops.io as sio
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelworks.artifacts.scan import Limits, ScanResult, scan_dir
from modelworks.errors import ConfigError


class _Payload:
    """Runs a shell command when unpickled (the classic pickle RCE)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def _xy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((40, 3))
    return x, (x[:, 0] > 0.5).astype(int)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))
    return folder


def test_malicious_pickle_is_found_and_never_run(model_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (model_dir / "model.pkl").write_bytes(pickle.dumps(_Payload(f"touch {marker}")))
    result = scan_dir(model_dir)
    assert not result.safe
    assert [f.file for f in result.findings] == ["model.pkl"]
    assert result.findings[0].severity == "critical"
    assert "system" in result.findings[0].description
    assert not marker.exists()
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(f"touch {control}")))  # the payload is real
    assert control.exists()


def test_builtins_import_payload_is_critical(model_dir: Path) -> None:
    class _Importer:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (__import__, ("os",))

    (model_dir / "model.pkl").write_bytes(pickle.dumps(_Importer()))
    result = scan_dir(model_dir, threshold="critical")
    assert not result.safe
    assert "builtins.__import__" in result.findings[0].description


def test_payload_hidden_under_unknown_suffix_is_scanned(model_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (model_dir / "weights.whatever").write_bytes(pickle.dumps(_Payload(f"touch {marker}")))
    result = scan_dir(model_dir)
    assert not result.safe
    assert result.findings[0].file == "weights.whatever"
    assert not marker.exists()


def test_payload_inside_zip_archive_is_found(model_dir: Path, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(_Payload("true")))
        archive.writestr("archive/data/0", np.arange(4.0).tobytes())
        archive.writestr("archive/extra", pickle.dumps(_Payload("true"), protocol=4))
    (model_dir / "model.pt").write_bytes(buffer.getvalue())
    result = scan_dir(model_dir)
    assert not result.safe
    assert [(f.file, f.scanner) for f in result.findings] == [
        ("model.pt:archive/data.pkl", "picklescan"),
        ("model.pt:archive/data/0", "content"),  # raw bytes: unknown is unsafe
        ("model.pt:archive/extra", "picklescan"),
    ]
    assert result.errors == []


def test_clean_skops_model_passes(model_dir: Path) -> None:
    x, y = _xy()
    sio.dump(
        RandomForestClassifier(n_estimators=2, random_state=0).fit(x, y), model_dir / "model.skops"
    )
    result = scan_dir(model_dir)
    assert result.safe, result.to_dict()
    assert "skops" in result.scanners


def test_skops_with_untrusted_function_is_a_finding(model_dir: Path) -> None:
    from sklearn.preprocessing import FunctionTransformer

    x, y = _xy()
    model = make_pipeline(FunctionTransformer(_double), LogisticRegression()).fit(x, y)
    sio.dump(model, model_dir / "model.skops")
    result = scan_dir(model_dir)
    assert not result.safe
    assert any("_double" in f.description for f in result.findings)


def _double(x: np.ndarray) -> np.ndarray:
    return x * 2


def test_clean_sklearn_pickle_passes(model_dir: Path) -> None:
    x, y = _xy()
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    (model_dir / "model.pkl").write_bytes(pickle.dumps(model))
    result = scan_dir(model_dir)
    assert result.safe, result.to_dict()
    assert set(result.scanners) == {"picklescan"}


def test_unknown_import_is_medium_and_blocks_only_at_medium(model_dir: Path) -> None:
    (model_dir / "model.pkl").write_bytes(pickle.dumps(Path("/x")))
    assert not scan_dir(model_dir).safe
    relaxed = scan_dir(model_dir, threshold="high")
    assert relaxed.safe
    assert relaxed.findings[0].severity == "medium"


def test_truncated_joblib_is_an_error_not_safe(model_dir: Path) -> None:
    x, y = _xy()
    joblib.dump(LogisticRegression().fit(x, y), model_dir / "model.joblib")
    data = (model_dir / "model.joblib").read_bytes()
    (model_dir / "model.joblib").write_bytes(data[: len(data) // 3])
    result = scan_dir(model_dir)
    assert not result.safe
    assert result.errors
    assert "model.joblib" in result.errors[0]


def test_joblib_with_raw_array_buffers_is_not_verified(model_dir: Path) -> None:
    x, y = _xy()
    joblib.dump(LogisticRegression().fit(x, y), model_dir / "model.joblib")
    result = scan_dir(model_dir)
    assert not result.safe
    assert any("joblib" in e for e in result.errors)


def test_garbage_file_is_an_unknown_format_that_blocks_at_any_threshold(model_dir: Path) -> None:
    (model_dir / "model.bin").write_bytes(b"\x07\x07 definitely not a pickle")
    result = scan_dir(model_dir, threshold="critical")
    assert not result.safe
    [finding] = result.findings
    assert (finding.file, finding.severity, finding.scanner) == ("model.bin", "critical", "content")
    assert "unknown format" in finding.description


def test_plain_numpy_array_passes_object_array_is_scanned(model_dir: Path) -> None:
    np.save(model_dir / "weights.npy", np.arange(10.0))
    assert scan_dir(model_dir).safe
    np.save(model_dir / "objects.npy", np.array([Path("/x")], dtype=object), allow_pickle=True)
    result = scan_dir(model_dir)
    assert [f.file for f in result.findings] == ["objects.npy"]


def test_onnx_model_passes_and_escaping_external_data_is_found(model_dir: Path) -> None:
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [weight],
    )
    model = helper.make_model(graph)
    (model_dir / "model.onnx").write_bytes(model.SerializeToString())
    assert scan_dir(model_dir).safe

    tensor = model.graph.initializer[0]
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("float_data")
    tensor.external_data.add(key="location", value="../../etc/passwd")
    (model_dir / "model.onnx").write_bytes(model.SerializeToString())
    result = scan_dir(model_dir)
    assert not result.safe
    assert "../../etc/passwd" in result.findings[0].description


def test_corrupt_onnx_is_an_error(model_dir: Path) -> None:
    (model_dir / "model.onnx").write_bytes(b"\xff\xff\xff not protobuf")
    result = scan_dir(model_dir)
    assert not result.safe
    assert "model.onnx" in result.errors[0]


def test_symlink_and_missing_folder_are_errors(model_dir: Path, tmp_path: Path) -> None:
    (model_dir / "link.pkl").symlink_to(tmp_path / "elsewhere.pkl")
    assert "symbolic link" in scan_dir(model_dir).errors[0]
    assert not scan_dir(tmp_path / "missing").safe


def test_result_to_dict_and_bad_threshold(model_dir: Path) -> None:
    result = scan_dir(model_dir)
    assert result.to_dict() == {"safe": True, "findings": [], "errors": [], "scanners": {}}
    assert isinstance(result, ScanResult)
    with pytest.raises(ConfigError, match="threshold 'severe'"):
        scan_dir(model_dir, threshold="severe")


def test_onnx_external_data_in_the_folder_passes_other_raw_files_do_not(model_dir: Path) -> None:
    from onnx import TensorProto, helper
    from onnx.external_data_helper import convert_model_to_external_data

    raw = np.full(256, 2.0, dtype="<f4").tobytes()
    weight = helper.make_tensor("w", TensorProto.FLOAT, [256], raw, raw=True)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256])],
        [weight],
    )
    model = helper.make_model(graph)
    convert_model_to_external_data(model, location="weights.data", size_threshold=0)
    tensor = model.graph.initializer[0]
    assert tensor.raw_data == raw
    (model_dir / "weights.data").write_bytes(raw)
    tensor.ClearField("raw_data")
    (model_dir / "model.onnx").write_bytes(model.SerializeToString())
    result = scan_dir(model_dir)
    assert result.safe, result.to_dict()
    (model_dir / "stray.data").write_bytes((model_dir / "weights.data").read_bytes())
    result = scan_dir(model_dir)
    assert [(f.file, f.severity, f.scanner) for f in result.findings] == [
        ("stray.data", "critical", "content")
    ]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [({}, Limits()), ({"max_depth": 2, "max_members": 7}, Limits(max_depth=2, max_members=7))],
)
def test_scan_limits_come_from_the_workspace_settings(
    tmp_path: Path, settings: dict[str, int], expected: Limits
) -> None:
    from modelworks.testing import make_workspace

    ws = (
        make_workspace(tmp_path / "ws", scan=settings)
        if settings
        else make_workspace(tmp_path / "ws")
    )
    assert Limits(**ws.settings.scan.limits()) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"\x93NUMPY",
        b"\x93NUMPY\x01\x00\x10\x00" + bytes(range(40, 200)),
        gzip.compress(pickle.dumps(Path("/x")))[:-12],
        b"PK\x03\x04" + bytes(range(60)),
        pickle.dumps({"a": 1})[:-3],
    ],
    ids=["npy-magic-only", "npy-bad-header", "gzip-truncated", "zip-garbled", "pickle-truncated"],
)
def test_garbled_file_of_a_known_format_is_an_error(model_dir: Path, data: bytes) -> None:
    (model_dir / "model.json").write_bytes(data)
    result = scan_dir(model_dir, threshold="critical")
    assert not result.safe
    assert result.errors
    assert result.errors[0].startswith("model.json")
