"""Files are judged by their bytes, not their names: pickles hidden in every carrier are found.

The end-to-end half runs a real example-style pipeline through `mw apply` in a fresh process:
its save step writes the model with skops and a `__reduce__` pickle under a data-file name.
The unit half builds each carrier (archives, compressed streams, protocol 0 in text, numpy
object arrays, nested archives, opaque blobs, bombs) and scans it with `scan_dir`.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelworks import _git
from modelworks.artifacts.oci import OCIStore
from modelworks.artifacts.scan import Limits, scan_dir
from modelworks.data.add import add
from modelworks.examples import CLASSIFICATION, PIPELINES_DIR
from modelworks.registry import audit
from modelworks.registry.queries import show
from modelworks.registry.store import Store
from modelworks.testing import make_workspace, write_dataset, write_pipeline, write_spec


class _Payload:
    """Runs a shell command when unpickled."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def _evil(protocol: int = 4) -> bytes:
    return pickle.dumps(_Payload("touch /nonexistent/pwned"), protocol=protocol)


# -- end to end: `mw apply` on a pipeline whose save step hides a pickle ----------------------

SAVE_STEP = """

import os as _os
import pickle as _pickle

import skops.io as _sio


class _Payload:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (_os.system, (self.command,))


def save(model, output_dir, params):
    _sio.dump(model, output_dir / "model.skops")
    if params.get("carrier"):
        payload = _Payload("touch " + params["marker"])
        (output_dir / params["carrier"]).write_bytes(_pickle.dumps(payload, params["protocol"]))
"""

# (file the save step writes, pickle protocol): protocol 0 is text, 1 has no header.
CARRIERS = [
    ("model.txt", 0),
    ("model.json", 4),
    ("model.csv", 2),
    ("model.parquet", 5),
    ("model.md", 0),
    ("model.yaml", 1),
    ("model.sig", 3),
]


def _model(carrier: str) -> str:
    return "carrier-" + carrier.replace(".", "-")


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One workspace, a clean model and one per carrier, applied once by `mw apply`."""
    root = tmp_path_factory.mktemp("content") / "ws"
    marker = root.parent / "pwned"
    ws = make_workspace(root)
    source = (PIPELINES_DIR / CLASSIFICATION / "pipeline.py").read_text() + SAVE_STEP
    write_pipeline(ws, "carrier", "v1", source)
    write_dataset(ws, "data/d/data.csv")
    write_spec(ws, "clean-model", "data/d/data.csv", pipeline="carrier")
    for carrier, protocol in CARRIERS:
        params = {"carrier": carrier, "protocol": protocol, "marker": str(marker)}
        write_spec(
            ws, _model(carrier), "data/d/data.csv", pipeline="carrier", model_hyperparameters=params
        )
    add(ws, ws.root / "data/d/data.csv", commit=False)
    _git.commit(ws.root, ["models", "pipelines", "data"], "carrier fleet")
    proc = subprocess.run(
        [sys.executable, "-m", "modelworks", "apply", "--workers", "1", "-C", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    store = Store(ws.registry_url)
    infos = {name: show(store, name) for name in ["clean-model", *map(_model, dict(CARRIERS))]}
    return {
        "ws": ws,
        "proc": proc,
        "infos": infos,
        "marker": marker,
        "rejected": audit.rows(store, action="version.rejected"),
    }


def test_apply_exits_1_and_counts_the_rejected_versions(applied: dict[str, Any]) -> None:
    proc = applied["proc"]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = proc.stdout.replace("\n", " ")
    assert f"1 trained, 0 gated, {len(CARRIERS)} rejected, 0 failed" in summary
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("carrier", "protocol"), CARRIERS)
def test_pickle_under_a_data_name_is_rejected_never_signed_packaged_or_deployed(
    applied: dict[str, Any], carrier: str, protocol: int
) -> None:
    name, ws = _model(carrier), applied["ws"]
    version = applied["infos"][name]["latest"]
    assert version["status"] == "rejected"
    assert f"{carrier}: critical unsafe import 'posix.system'" in version["reason"]
    assert version["artifact"]["digest"] is None
    assert version["signed"] is False
    assert name not in OCIStore(ws.oci_dir).repos()
    assert not (ws.root / "deploy" / "test" / name).exists()
    assert name in [row["target"] for row in applied["rejected"]]
    assert not applied["marker"].exists()


def test_the_lines_own_outputs_still_pass_end_to_end(applied: dict[str, Any]) -> None:
    info, ws = applied["infos"]["clean-model"], applied["ws"]
    assert info["latest"]["status"] == "registered"
    assert info["latest"]["signed"] is True
    assert info["latest"]["scan"]["findings"] == []
    assert "skops" in info["latest"]["scan"]["scanners"]
    assert (ws.root / "deploy/test/clean-model/config.yaml").exists()


# -- unit: each carrier through scan_dir ------------------------------------------------------


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def _nested(levels: int, inner: bytes) -> bytes:
    for _ in range(levels):
        inner = _zip({"inner.zip": inner})
    return inner


# (file name, its bytes, the finding's file, a phrase of its description). Every file name is
# one the old scanner skipped by suffix.
UNSAFE: list[tuple[str, Callable[[], bytes], str, str]] = [
    ("bundle.json", lambda: _zip({"weights.bin": _evil(0)}), "bundle.json:weights.bin", "system"),
    (
        "archive.csv",
        lambda: _tar({"m/payload.txt": _evil(2)}),
        "archive.csv:m/payload.txt",
        "system",
    ),
    ("model.tgz.md", lambda: gzip.compress(_tar({"p": _evil()})), "model.tgz.md:p", "system"),
    ("model.txt", lambda: gzip.compress(_evil()), "model.txt", "system"),
    ("model.yaml", lambda: bz2.compress(_evil()), "model.yaml", "system"),
    ("model.sig", lambda: lzma.compress(_evil()), "model.sig", "system"),
    ("model.md", lambda: lzma.compress(_evil(), lzma.FORMAT_ALONE), "model.md", "system"),
    ("model.parquet", lambda: zlib.compress(_evil()), "model.parquet", "system"),
    ("notes.txt", lambda: _evil(0), "notes.txt", "system"),
    ("readme.md", lambda: b"cos\nsystem\n(S'id'\ntR.", "readme.md", "system"),
    (
        "arrays.json",
        lambda: _npy(np.array([_Payload("id")], dtype=object)),
        "arrays.json",
        "system",
    ),
    (
        "arrays.parquet",
        lambda: _npz(w=np.array([_Payload("id")], dtype=object)),
        "arrays.parquet:w.npy",
        "system",
    ),
    (
        "nested.md",
        lambda: _nested(2, _zip({"x.pkl": _evil()})),
        "nested.md:inner.zip:inner.zip:x.pkl",
        "system",
    ),
    ("blob.yaml", lambda: np.random.default_rng(0).bytes(4096), "blob.yaml", "unknown format"),
    (
        "member.json",
        lambda: _zip({"raw": b"\x00\x01\x02" * 50}),
        "member.json:raw",
        "unknown format",
    ),
]


@pytest.mark.parametrize(
    ("name", "build", "where", "phrase"), UNSAFE, ids=[u[0] + ":" + u[2] for u in UNSAFE]
)
def test_pickle_in_every_carrier_is_found(
    tmp_path: Path, name: str, build: Callable[[], bytes], where: str, phrase: str
) -> None:
    (tmp_path / name).write_bytes(build())
    result = scan_dir(tmp_path)
    assert not result.safe
    assert [(f.file, f.severity) for f in result.findings] == [(where, "critical")]
    assert phrase in result.findings[0].description
    assert result.errors == []


def test_zip_appended_to_a_pickle_is_judged_as_both(tmp_path: Path) -> None:
    # zipfile finds an archive by its end, so a loader may open this file either way.
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(1) + _zip({"data.pkl": _evil()}))
    result = scan_dir(tmp_path)
    assert [(f.file, f.severity) for f in result.findings] == [("model.pkl:data.pkl", "critical")]
    assert "not a parseable pickle stream" in result.errors[0]


@pytest.mark.parametrize("magic", [b"\x28\xb5\x2f\xfd", b"\x04\x22\x4d\x18"], ids=["zstd", "lz4"])
def test_zstd_and_lz4_block_when_they_cannot_be_opened(tmp_path: Path, magic: bytes) -> None:
    (tmp_path / "model.json").write_bytes(magic + _evil())
    result = scan_dir(tmp_path)
    assert not result.safe
    assert [f.description for f in result.findings if "not installed" in f.description] or (
        result.errors
    )


def test_unknown_blob_blocks_even_at_the_critical_threshold(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(bytes(range(166, 230)))
    result = scan_dir(tmp_path, threshold="critical")
    assert not result.safe
    assert result.findings[0].scanner == "content"


@pytest.mark.parametrize(
    ("build", "limits", "phrase"),
    [
        (lambda: _zip({"zeros": bytes(20 << 20)}), Limits(max_expanded_bytes=1 << 20), "past the"),
        (lambda: gzip.compress(b"a" * (20 << 20)), Limits(max_expanded_bytes=1 << 20), "past the"),
        (lambda: _nested(7, _zip({"m.json": b"{}"})), Limits(), "nested more than 5"),
        (
            lambda: _zip({f"m{i}.json": b"{}" for i in range(30)}),
            Limits(max_members=10),
            "more than 10",
        ),
    ],
    ids=["zip-bomb", "gzip-bomb", "depth", "members"],
)
def test_a_bomb_is_a_finding_not_a_hang(
    tmp_path: Path, build: Callable[[], bytes], limits: Limits, phrase: str
) -> None:
    (tmp_path / "model.json").write_bytes(build())
    result = scan_dir(tmp_path, limits=limits)
    assert not result.safe
    [finding] = result.findings
    assert (finding.file, finding.severity) == ("model.json", "critical")
    assert phrase in finding.description


def _safetensors() -> bytes:
    data = np.arange(4, dtype="<f4").tobytes()
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, len(data)]}})
    return len(header).to_bytes(8, "little") + header.encode() + data


def _parquet() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"x": [1.0, 2.0]}), buffer)
    return buffer.getvalue()


SAFE: list[tuple[str, Callable[[], bytes]]] = [
    ("metrics.json", lambda: json.dumps({"accuracy": 0.9}).encode()),
    ("vocab.txt", lambda: "cat\ndog\neel\nfox\nçà\n".encode()),
    ("table.csv", lambda: b"f0,f1,label\n0.5,0.25,1\n"),
    ("README.md", lambda: b"# Model\n\nTrained by the line.\n"),
    ("weights.npy", lambda: _npy(np.arange(10.0))),
    ("arrays.npz", lambda: _npz(a=np.arange(3), b=np.ones((2, 2)))),
    ("model.safetensors", _safetensors),
    ("table.parquet", _parquet),
    ("metrics.json.gz", lambda: gzip.compress(b'{"accuracy": 0.9}')),
    ("empty.txt", lambda: b""),
]


@pytest.mark.parametrize(("name", "build"), SAFE, ids=[s[0] for s in SAFE])
def test_known_safe_formats_pass(tmp_path: Path, name: str, build: Callable[[], bytes]) -> None:
    (tmp_path / name).write_bytes(build())
    result = scan_dir(tmp_path)
    assert result.safe, result.to_dict()
    assert result.findings == []


@pytest.mark.parametrize("runtime", ["sklearn", "onnx"])
def test_the_files_the_line_writes_scan_clean(tmp_path: Path, runtime: str) -> None:
    from sklearn.linear_model import LogisticRegression

    from modelworks.artifacts.modelfiles import save_model, write_json
    from modelworks.monitor.profile import build_profile
    from modelworks.runs.worker import sbom_bytes

    rng = np.random.default_rng(0)
    x = rng.random((40, 3))
    data = {"X_train": x, "y_train": (x[:, 0] > 0.5).astype(int)}
    model = LogisticRegression().fit(data["X_train"], data["y_train"])
    write_json(tmp_path / "metadata.json", save_model(runtime, model, tmp_path, data))
    write_json(tmp_path / "metrics.json", {"accuracy": 0.9})
    write_json(tmp_path / "profile.json", build_profile(x, ["a", "b", "c"]), compact=True)
    (tmp_path / "sbom.json").write_bytes(sbom_bytes())
    result = scan_dir(tmp_path)
    assert result.safe, result.to_dict()
    assert result.findings == []
    assert set(result.scanners) == {"skops" if runtime == "sklearn" else "onnx"}
