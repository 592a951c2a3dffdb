"""Scan model files for unsafe serialization before anything packages or loads them.

Every file in the model folder is judged by its bytes, never its name, in-process and
without loading it (``formats.sniff`` names the format from magic numbers and structure):

- zip (``.pt``, ``.npz``, skops, anything) and tar archives: every member is judged the same
  way, recursively; gzip, bz2, xz/lzma and zlib streams (zstd and lz4 when their module is
  installed) are judged by what they decompress to. Depth, expanded bytes and member count
  are bounded (``Limits``): past a limit is a ``critical`` finding, so a zip bomb blocks the
  version instead of hanging the line;
- skops files must also contain only allowlisted types (``skops.io.get_untrusted_types``),
  and ONNX files must parse with ``onnx.load`` and keep their external data in the folder;
- pickles of every protocol (protocol 0 is ASCII text) and object ``.npy`` arrays: the
  imports their opcodes make (``pickles.walk``); imports that run code are ``critical``,
  imports outside our allowlist ``medium``;
- known-safe formats pass: npy without object dtype, safetensors, parquet, UTF-8 text that
  is not a pickle (JSON, CSV, YAML, Markdown, the line's own metadata and signature);
- anything else is *unknown*, and unknown is unsafe: a ``critical`` finding.

picklescan supplies the denylist; the opcode walk is ours, so that it streams and tells a
text file that merely starts like a pickle from one that calls what it imports. A file of a
recognised format that does not parse is an *error*, never a pass: ``safe`` means
"verified safe", and a truncated or garbled file is not.
"""

from __future__ import annotations

import functools
import io
import shutil
import stat
import struct
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from modelworks.artifacts import formats as fmt
from modelworks.artifacts.pickles import allowed, deny_severity, judge, walk
from modelworks.errors import ConfigError

SEVERITIES = ("low", "medium", "high", "critical")
_UNKNOWN = (
    "unknown format: not a pickle, not text, and not a format the scanner verifies "
    "(ONNX, skops, safetensors, numpy, parquet, zip, tar, compressed); unknown is unsafe"
)
_SPOOL_BYTES = 32 << 20
_TEXT, _ONNX = "text", "onnx"
_PACKED = frozenset({".gz", ".bz2", ".xz", ".lzma", ".z", ".zz", ".zst", ".lz4"})


@dataclass(frozen=True)
class Limits:
    """How far the scanner opens nested content before calling it a finding."""

    max_depth: int = 5
    max_expanded_bytes: int = 4 << 30
    max_members: int = 100_000


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
    limits: Limits
    budget: fmt.Budget
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    scanners: set[str] = field(default_factory=set)
    unknown: list[str] = field(default_factory=list)  # top-level files, settled at the end
    external_data: set[str] = field(default_factory=set)  # claimed by an ONNX model

    def find(self, where: str, severity: str, description: str, scanner: str) -> None:
        self.findings.append(Finding(where, severity, description, scanner))


@dataclass(frozen=True)
class _Item:
    """What is being judged: where it is (for messages), its name's suffix, its size."""

    where: str
    suffix: str
    size: int | None
    file: Path | None = None  # set for files in the folder itself
    root: Path | None = None
    top: bool = False  # a file of the folder itself (on disk or in memory), not a member


def scan_dir(path: Path, *, threshold: str = "medium", limits: Limits | None = None) -> ScanResult:
    """Scan every file under `path`; safe = no finding at or above `threshold`, no errors."""
    if threshold not in SEVERITIES:
        raise ConfigError(f"scan threshold '{threshold}' is not one of {', '.join(SEVERITIES)}")
    limits = limits or Limits()
    path = Path(path)
    report = _Report(limits, fmt.Budget(limits.max_expanded_bytes, limits.max_members))
    if not path.is_dir():
        report.errors.append(f"{path}: model folder does not exist or is not a folder")
    else:
        for file in sorted(path.rglob("*")):
            _scan_file(file, path, report)
    return _verdict(report, threshold)


def scan_files(
    files: Mapping[str, bytes], *, threshold: str = "medium", limits: Limits | None = None
) -> ScanResult:
    """`scan_dir` of a model folder held in memory (relative posix path -> bytes)."""
    if threshold not in SEVERITIES:
        raise ConfigError(f"scan threshold '{threshold}' is not one of {', '.join(SEVERITIES)}")
    limits = limits or Limits()
    report = _Report(limits, fmt.Budget(limits.max_expanded_bytes, limits.max_members))
    for rel in sorted(files):
        item = _Item(rel, Path(rel).suffix.lower(), len(files[rel]), top=True)
        _scan_top(functools.partial(io.BytesIO, files[rel]), item, report)
    return _verdict(report, threshold)


def _verdict(report: _Report, threshold: str) -> ScanResult:
    for rel in report.unknown:
        if rel not in report.external_data:
            report.find(rel, "critical", _UNKNOWN, "content")
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
    info = file.lstat()
    if stat.S_ISLNK(info.st_mode):
        report.errors.append(f"{rel}: symbolic links are not allowed in a model folder")
        return
    if not stat.S_ISREG(info.st_mode):
        return
    item = _Item(rel, file.suffix.lower(), info.st_size, file, root, top=True)
    _scan_top(lambda: file.open("rb"), item, report)


def _scan_top(opener: Callable[[], IO[bytes]], item: _Item, report: _Report) -> None:
    """Judge one top-level file of a model folder (on disk or in memory) into `report`."""
    try:
        with opener() as stream:
            judged = _judge(stream, item, report, depth=0)
            # text cannot hold a zip's end record (its signature has control bytes)
            if judged not in (fmt.ZIP, _TEXT) and _zip_at_end(stream):
                _scan_zip(stream, item, report, depth=0)
    except fmt.LimitError as exc:
        report.find(item.where, "critical", str(exc), "content")
    except Exception as exc:  # any scanner failure means "not verified safe"
        report.errors.append(f"{item.where}: could not be scanned ({type(exc).__name__}: {exc})")


def _judge(stream: IO[bytes], item: _Item, report: _Report, depth: int) -> str:
    """Judge one stream (a file, an archive member, a decompressed stream) by its bytes;
    return the format it was judged as."""
    if depth > report.limits.max_depth:
        raise fmt.LimitError(
            f"{item.where}: nested more than {report.limits.max_depth} archives or compressed "
            "streams deep (raise scan.max_depth if this is intended)"
        )
    head = stream.read(fmt.HEAD_BYTES)
    if fmt.sniff(head) == fmt.NPY and _npy_plain(head):
        return fmt.NPY  # the common case in skops and npz archives: no need to rewind
    stream.seek(0)
    kind = fmt.identify(head, stream, item.size)
    if kind == fmt.ZIP:
        _scan_zip(stream, item, report, depth)
    elif kind == fmt.TAR:
        _scan_tar(stream, item, report, depth)
    elif kind in fmt.COMPRESSED:
        _scan_compressed(kind, stream, item, report, depth)
    elif kind == fmt.NPY:
        _scan_npy(stream, item, report)
    elif kind == fmt.SAFETENSORS or (
        kind == fmt.PARQUET and fmt.parquet_footer_ok(stream, item.size)
    ):
        pass  # known-safe: tensors and tables are read as data, never as code
    else:
        return _scan_plain(stream, item, report, kind, head)
    return kind


def _zip_at_end(stream: IO[bytes]) -> bool:
    """Whether a file that does not start as a zip still is one to zipfile (which reads the
    end): a pickle with an archive appended is both, and a loader may open either."""
    stream.seek(0)
    if stream.read(2) == b"PK":
        return False
    found = zipfile.is_zipfile(stream)
    stream.seek(0)
    return found


def _member(stream: IO[bytes], item: _Item, report: _Report, depth: int) -> None:
    """Judge an archive member or a decompressed stream; its errors name it."""
    try:
        _judge(stream, item, report, depth + 1)
    except fmt.LimitError:
        raise
    except Exception as exc:
        report.errors.append(f"{item.where}: could not be scanned ({type(exc).__name__}: {exc})")


def _scan_compressed(
    kind: str, stream: IO[bytes], item: _Item, report: _Report, depth: int
) -> None:
    try:
        inner = fmt.decompressed(kind, stream)
    except LookupError as exc:
        report.find(item.where, "critical", f"{exc}; unknown is unsafe", "content")
        return
    name = Path(item.where.rsplit(":", 1)[-1])
    suffix = name.with_suffix("").suffix.lower() if name.suffix.lower() in _PACKED else ""
    with inner, io.BufferedReader(fmt.Limited(inner, report.budget, item.where)) as limited:
        _member(limited, _Item(item.where, suffix, None), report, depth)


@contextmanager
def _random_access(stream: IO[bytes]) -> Iterator[IO[bytes]]:
    """`stream` itself when it is a file on disk, else a spooled copy (archives seek around)."""
    if isinstance(stream, io.BytesIO) or (
        isinstance(stream, io.BufferedReader) and isinstance(stream.raw, io.FileIO)
    ):
        yield stream
        return
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
        shutil.copyfileobj(stream, spool, 1 << 20)
        spool.seek(0)
        yield spool


def _scan_zip(stream: IO[bytes], item: _Item, report: _Report, depth: int) -> None:
    with _random_access(stream) as source, zipfile.ZipFile(source) as archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        report.budget.members(len(infos), item.where)
        # zipfile never reads a member past its declared size, so the sizes are the bound
        report.budget.charge(sum(i.file_size for i in infos), item.where)
        if any(i.filename == "schema.json" for i in infos):
            _scan_skops(archive, source, item, report)
        for info in infos:
            where = f"{item.where}:{info.filename}"
            if info.flag_bits & 0x1:
                report.find(where, "critical", "encrypted member cannot be scanned", "content")
                continue
            head = _stored_head(source, info)
            if head is not None and fmt.sniff(head) == fmt.NPY and _npy_plain(head):
                continue  # skops and npz arrays: the header says plain data
            with archive.open(info) as member:
                _member(
                    member,
                    _Item(where, Path(info.filename).suffix.lower(), info.file_size),
                    report,
                    depth,
                )


def _stored_head(source: IO[bytes], info: zipfile.ZipInfo) -> bytes | None:
    """The first bytes of an uncompressed member, read straight from the archive (opening
    each member through zipfile costs more than judging it); None to go through zipfile."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    source.seek(info.header_offset)
    local = source.read(30 + 1024 + fmt.HEAD_BYTES)
    if local[:4] != b"PK\x03\x04":
        return None
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = 30 + name_len + extra_len
    if start > 30 + 1024:
        return None
    return local[start : start + min(info.file_size, fmt.HEAD_BYTES)]


def _scan_tar(stream: IO[bytes], item: _Item, report: _Report, depth: int) -> None:
    with _random_access(stream) as source, tarfile.open(fileobj=source, mode="r:") as archive:
        for member in archive:
            report.budget.members(1, item.where)
            where = f"{item.where}:{member.name}"
            if member.isdir():
                continue
            handle = archive.extractfile(member) if member.isfile() else None
            if handle is None:
                report.find(where, "high", "tar member is a link or device, not a file", "content")
                continue
            report.budget.charge(member.size, where)
            with handle:
                _member(
                    handle,
                    _Item(where, Path(member.name).suffix.lower(), member.size),
                    report,
                    depth,
                )


def _scan_skops(archive: zipfile.ZipFile, stream: IO[bytes], item: _Item, report: _Report) -> None:
    """The skops audit of a zip with a schema.json; one it cannot read is judged as a zip."""
    from skops.io import get_untrusted_types

    try:
        if item.file is not None:
            untrusted = get_untrusted_types(file=item.file)
        else:
            stream.seek(0)
            untrusted = get_untrusted_types(data=stream.read())
    except Exception as exc:
        if item.suffix == ".skops":
            report.errors.append(f"{item.where}: not a valid skops file ({exc})")
        return
    report.scanners.add("skops")
    for type_name in untrusted:
        module, _, name = type_name.rpartition(".")
        if not allowed(module, name):
            report.find(
                item.where,
                "medium",
                f"untrusted type '{type_name}' is not on the allowlist",
                "skops",
            )


def _scan_npy(stream: IO[bytes], item: _Item, report: _Report) -> None:
    """Object arrays hold a pickle after the header; other dtypes are plain data."""
    from numpy.lib import format as npformat

    version = npformat.read_magic(stream)
    read_header = (
        npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
    )
    _, _, dtype = read_header(stream)
    if dtype.hasobject:
        _scan_pickle(stream, item, report)


def _npy_plain(head: bytes) -> bool:
    """Fast path: an .npy header that cannot spell an object dtype (numpy's parser is slow).

    Every spelling of numpy's object dtype ('O', '|O', 'O8', 'object', 'object_') has an
    'O' or the word object in it; a header with neither holds plain data, whatever else.
    """
    if head[6:7] not in (b"\x01", b"\x02", b"\x03"):
        return False
    width = 2 if head[6:7] == b"\x01" else 4
    length = int.from_bytes(head[8 : 8 + width], "little")
    header = head[8 + width : 8 + width + length].decode("latin-1")
    well_formed = len(header) == length and header.startswith("{") and "descr" in header
    return well_formed and "O" not in header and "object" not in header.lower()


def _scan_pickle(stream: IO[bytes], item: _Item, report: _Report) -> None:
    found = walk(stream)
    if found.error is not None:
        report.errors.append(f"{item.where}: not a parseable pickle stream ({found.error})")
    _judge_imports(found.imports, item, report)


def _scan_plain(stream: IO[bytes], item: _Item, report: _Report, kind: str, head: bytes) -> str:
    """A pickle (any protocol), an ONNX model, text that is not a pickle, or unknown."""
    onnx = kind == "" and (item.suffix == ".onnx" or head[:1] == b"\x08")
    found = walk(stream)
    if found.pickles and found.error is None:
        _judge_imports(found.imports, item, report)
        return fmt.PICKLE
    stream.seek(0)
    if not found.imports and onnx and _scan_onnx(stream, item, report):
        return _ONNX
    stream.seek(0)
    if fmt.is_text(stream):
        # Text that starts like a pickle: what pickle.load would import before it fails.
        runs = found.calls or found.pickles
        risky = {i for i in found.imports if runs or deny_severity(*i)}
        if risky:
            _judge_imports(risky, item, report)
        return _TEXT
    if found.pickles or found.imports or kind == fmt.PICKLE:
        report.errors.append(f"{item.where}: not a parseable pickle stream ({found.error})")
        _judge_imports(found.imports, item, report)
    elif item.top:
        report.unknown.append(item.where)  # an ONNX model in the folder may claim it
    else:
        report.find(item.where, "critical", _UNKNOWN, "content")
    return kind


def _judge_imports(imports: set[tuple[str, str]], item: _Item, report: _Report) -> None:
    report.scanners.add("picklescan")
    findings, errors = judge(imports)
    for severity, description in findings:
        report.find(item.where, severity, description, "picklescan")
    report.errors.extend(f"{item.where}: {e}" for e in errors)


def _scan_onnx(stream: IO[bytes], item: _Item, report: _Report) -> bool:
    """Judge an ONNX model; False when the bytes are not one (an error if named .onnx)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    try:
        model = onnx.load(stream, load_external_data=False)
        problem = "" if model.ir_version > 0 and len(model.graph.node) else "it has no graph"
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        if item.suffix == ".onnx":
            report.errors.append(f"{item.where}: not a valid ONNX model ({problem})")
        return False
    report.scanners.add("onnx")
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            _external_data(item, tensor.name, location, report)
    return True


def _external_data(item: _Item, tensor: str, location: str, report: _Report) -> None:
    if item.file is not None and item.root is not None:
        root = item.root.resolve()
        target = (item.file.parent.resolve() / location).resolve()
        if target.is_relative_to(root) and target.is_file():
            report.external_data.add(target.relative_to(root).as_posix())
            return
    report.find(
        item.where,
        "high",
        f"tensor '{tensor}' reads external data '{location}' outside the model folder or missing",
        "onnx",
    )


@cache
def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"
