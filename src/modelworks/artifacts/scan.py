"""Scan model files for unsafe serialization before anything packages or loads them.

Every file in the model folder gets a verdict, in-process and without loading it:

- data files (``.json``, ``.csv``, ``.parquet``, …) pass;
- ``.onnx`` must parse with ``onnx.load`` and keep its external data inside the folder;
- ``.skops`` must contain only allowlisted types (``skops.io.get_untrusted_types``);
- everything else goes through the pickle scanner: picklescan lists the imports a
  pickle makes (also inside zip archives such as ``.pt`` and object ``.npy`` arrays);
  imports on picklescan's denylist are ``critical`` findings, imports outside our
  allowlist are ``medium`` findings.

picklescan rather than modelscan: modelscan reports a pickle whose parse fails after a
first complete pickle as clean, skips files by extension, and pins rich<15.

A file the scanner cannot parse is an *error*, never a pass: ``safe`` means "verified
safe", and a truncated or garbled file is not.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from modelworks.errors import ConfigError

SEVERITIES = ("low", "medium", "high", "critical")

DATA_SUFFIXES = frozenset(
    {".json", ".txt", ".csv", ".tsv", ".parquet", ".yaml", ".yml", ".md", ".sig"}
)

# Imports a scikit-learn model legitimately needs. Classes under sklearn are allowed
# because unpickling one only runs its constructor/__setstate__, which store state;
# module-level *functions* under sklearn are not allowed (they could do anything).
# The numpy/scipy/builtins entries are constructors of plain values and arrays.
ALLOWED_IMPORTS: dict[str, frozenset[str]] = {
    "numpy": frozenset({"dtype", "ndarray"}),
    "numpy.core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy._core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy.random._pickle": frozenset(
        {"__bit_generator_ctor", "__randomstate_ctor", "__generator_ctor"}
    ),
    "numpy.random.bit_generator": frozenset({"SeedSequence", "__pyx_unpickle_SeedSequence"}),
    "numpy.random._mt19937": frozenset({"MT19937"}),
    "numpy.random._pcg64": frozenset({"PCG64", "PCG64DXSM"}),
    "numpy.random.mtrand": frozenset({"RandomState"}),
    "numpy.random._generator": frozenset({"Generator"}),
    "builtins": frozenset(
        {
            "set",
            "frozenset",
            "slice",
            "complex",
            "bytearray",
            "range",
            "object",
            "int",
            "float",
            "str",
            "bytes",
            "list",
            "dict",
            "tuple",
            "bool",
        }
    ),
    "collections": frozenset({"OrderedDict", "defaultdict", "Counter", "deque"}),
    "copyreg": frozenset({"_reconstructor"}),
    "datetime": frozenset({"datetime", "date", "time", "timedelta", "timezone"}),
}
_SCIPY_SPARSE = frozenset(
    {"csr_matrix", "csc_matrix", "coo_matrix", "csr_array", "csc_array", "coo_array"}
)
# joblib stores arrays as raw bytes *between* pickle opcodes; an opcode scanner reads
# those bytes as opcodes, so what it sees is not what joblib.load runs.
_JOBLIB_WRAPPERS = frozenset({"NumpyArrayWrapper", "NDArrayWrapper", "ZNDArrayWrapper"})
# Not on picklescan's list but as good as exec: import anything, rewrite any object.
_EXTRA_DENY: dict[str, Any] = {
    name: {"__import__", "globals", "locals", "vars", "setattr", "delattr", "input"}
    for name in ("builtins", "__builtin__")
}
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_PICKLE_MAGIC = frozenset(bytes([0x80, protocol]) for protocol in range(2, 6))
_PICKLE_MEMBER = re.compile(r"\.(pkl|pickle)$")


@dataclass
class Finding:
    """One reason a file is not safe to load."""

    file: str
    severity: str
    description: str
    scanner: str


@dataclass
class ScanResult:
    """The verdict over a model folder: safe only when verified so."""

    safe: bool
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    scanners: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (for the registry and the OCI annotations)."""
        return asdict(self)


@dataclass
class _Report:
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    scanners: set[str] = field(default_factory=set)


def scan_dir(path: Path, *, threshold: str = "medium") -> ScanResult:
    """Scan every file under `path`; safe = no finding at or above `threshold`, no errors."""
    if threshold not in SEVERITIES:
        raise ConfigError(f"scan threshold '{threshold}' is not one of {', '.join(SEVERITIES)}")
    path = Path(path)
    report = _Report()
    if not path.is_dir():
        report.errors.append(f"{path}: model folder does not exist or is not a folder")
    else:
        for file in sorted(path.rglob("*")):
            _scan_file(file, path, report)
    level = SEVERITIES.index(threshold)
    blocking = [f for f in report.findings if SEVERITIES.index(f.severity) >= level]
    return ScanResult(
        safe=not blocking and not report.errors,
        findings=report.findings,
        errors=report.errors,
        scanners={name: _version(name) for name in sorted(report.scanners)},
    )


def _scan_file(file: Path, root: Path, report: _Report) -> None:
    rel = file.relative_to(root).as_posix()
    if file.is_symlink():
        report.errors.append(f"{rel}: symbolic links are not allowed in a model folder")
        return
    if not file.is_file():
        return
    suffix = file.suffix.lower()
    if suffix in DATA_SUFFIXES:
        return
    try:
        if suffix == ".onnx":
            _scan_onnx(file, root, rel, report)
        elif suffix == ".skops":
            _scan_skops(file, rel, report)
        else:
            with file.open("rb") as stream:
                _scan_pickle_family(stream, rel, report)
    except Exception as exc:  # any scanner failure means "not verified safe"
        report.errors.append(f"{rel}: could not be scanned ({type(exc).__name__}: {exc})")


def _scan_onnx(file: Path, root: Path, rel: str, report: _Report) -> None:
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    report.scanners.add("onnx")
    model = onnx.load(str(file), load_external_data=False)
    base = file.parent.resolve()
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        target = (base / location).resolve()
        if not target.is_relative_to(root.resolve()) or not target.is_file():
            report.findings.append(
                Finding(
                    rel,
                    "high",
                    f"tensor '{tensor.name}' reads external data '{location}' outside the model "
                    "folder or missing",
                    "onnx",
                )
            )


def _scan_skops(file: Path, rel: str, report: _Report) -> None:
    from skops.io import get_untrusted_types

    report.scanners.add("skops")
    for type_name in get_untrusted_types(file=file):
        module, _, name = type_name.rpartition(".")
        if not _allowed(module, name):
            report.findings.append(
                Finding(
                    rel, "medium", f"untrusted type '{type_name}' is not on the allowlist", "skops"
                )
            )


def _scan_pickle_family(stream: IO[bytes], rel: str, report: _Report) -> None:
    report.scanners.add("picklescan")
    head = stream.read(6)
    stream.seek(0)
    if head.startswith(_ZIP_MAGIC):
        _scan_zip(stream, rel, report)
    elif head == b"\x93NUMPY":
        _scan_npy(stream, rel, report)
    else:
        _scan_pickle(stream, rel, report)


def _scan_zip(stream: IO[bytes], rel: str, report: _Report) -> None:
    with zipfile.ZipFile(stream) as archive:
        for name in archive.namelist():
            where = f"{rel}:{name}"
            with archive.open(name) as member:
                head = member.read(6)
            if head.startswith(_ZIP_MAGIC):
                report.errors.append(f"{where}: nested archives are not scanned")
            elif head == b"\x93NUMPY":
                _scan_npy(io.BytesIO(archive.read(name)), where, report)
            elif _PICKLE_MEMBER.search(name) or head[:2] in _PICKLE_MAGIC:
                _scan_pickle(io.BytesIO(archive.read(name)), where, report)


def _scan_npy(stream: IO[bytes], rel: str, report: _Report) -> None:
    from numpy.lib import format as npformat

    version = npformat.read_magic(stream)
    read_header = (
        npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
    )
    _, _, dtype = read_header(stream)
    if dtype.hasobject:
        _scan_pickle(stream, rel, report)


def _scan_pickle(stream: IO[bytes], rel: str, report: _Report) -> None:
    from picklescan.scanner import GenOpsError, _list_globals

    try:
        imports = _list_globals(stream, multiple_pickles=True)
    except GenOpsError as exc:
        report.errors.append(f"{rel}: not a parseable pickle stream ({exc})")
        imports = exc.globals or set()
    _judge_imports(imports, rel, report)


def _judge_imports(imports: Iterable[tuple[str, ...]], rel: str, report: _Report) -> None:
    for entry in sorted(imports):
        module, name = entry[0], (entry[1] if len(entry) > 1 else "")
        if module == "joblib.numpy_pickle" and name in _JOBLIB_WRAPPERS:
            report.errors.append(
                f"{rel}: joblib file with embedded raw array buffers cannot be verified by an "
                "opcode scanner; save the model with skops or ONNX instead"
            )
            continue
        severity = _deny_severity(module, name)
        if severity:
            report.findings.append(
                Finding(
                    rel,
                    severity,
                    f"unsafe import '{module}.{name}' runs code when loaded",
                    "picklescan",
                )
            )
        elif not _allowed(module, name):
            report.findings.append(
                Finding(
                    rel, "medium", f"import '{module}.{name}' is not on the allowlist", "picklescan"
                )
            )


def _deny_severity(module: str, name: str) -> str | None:
    from picklescan.scanner import _unsafe_globals

    if "unknown" in (module, name):
        return "critical"  # a computed import: the scanner cannot tell what it is
    if _matches(_unsafe_globals, module, name) or _matches(_EXTRA_DENY, module, name):
        return "critical"
    return None


def _matches(table: dict[str, Any], module: str, name: str) -> bool:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        rule = table.get(".".join(parts[:i]))
        if rule == "*" or (i == len(parts) and _rule_names(rule, name)):
            return True
    return False


def _rule_names(rule: Any, name: str) -> bool:
    if isinstance(rule, str):
        return rule == name
    return rule is not None and name in rule


def _allowed(module: str, name: str) -> bool:
    if name in ALLOWED_IMPORTS.get(module, ()):
        return True
    if module.split(".")[0] == "sklearn":
        return name[:1].isupper() and name.isidentifier()
    in_sparse = module == "scipy.sparse" or module.startswith("scipy.sparse.")
    return in_sparse and name in _SCIPY_SPARSE


@cache
def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"
