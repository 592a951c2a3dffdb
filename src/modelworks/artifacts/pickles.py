"""Pickle opcodes, read without unpickling: the imports a stream makes and whether it calls.

``walk`` follows ``pickletools.genops`` through every pickle in a stream (a file may hold
several, one after another) and records each import: ``GLOBAL``/``INST`` name theirs, and
``STACK_GLOBAL`` takes the two strings pushed before it (directly or through the memo); an
import it cannot resolve is recorded as ``unknown``. It keeps only strings, never the ops, so
a large pickle streams. ``judge`` turns the imports into findings against the allowlist.
"""

from __future__ import annotations

import pickletools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from modelworks.artifacts.formats import LimitError

UNKNOWN = "unknown"
# Opcodes that call something: what turns an import into code that runs.
_CALLS = frozenset({"REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"})
_STRINGS = frozenset(
    {
        "SHORT_BINUNICODE",
        "UNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
    }
)
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_NO_PUSH = frozenset({"FRAME", "PROTO", "STOP"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_MEMO_OPS = _PUTS | _GETS
_EXTS = frozenset({"EXT1", "EXT2", "EXT4"})
_MAX_NAME = 512  # longer strings are never module or attribute names

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


@dataclass
class Walk:
    """What the opcodes of a stream do: imports, complete pickles, calls, the parse error."""

    imports: set[tuple[str, str]] = field(default_factory=set)
    pickles: int = 0
    calls: bool = False
    error: str | None = None


def walk(stream: IO[bytes]) -> Walk:
    """Follow every pickle in `stream` from its current position to the end or an error."""
    found = Walk()
    memo = _Memo()
    while True:
        try:
            _one(stream, found, memo)
        except LimitError:
            raise
        except Exception as exc:  # genops raises ValueError, struct errors, and more
            found.error = str(exc) or type(exc).__name__
            return found
        found.pickles += 1
        if not stream.read(1):
            return found
        stream.seek(-1, 1)


class _Memo:
    """The memo's string entries (the only ones an import can be spelled with)."""

    def __init__(self) -> None:
        self.strings: dict[int, str] = {}
        self.size = 0

    def put(self, key: int | None, value: str | None) -> None:
        key = self.size if key is None else key
        self.size = max(self.size, key + 1)
        if value is None:
            self.strings.pop(key, None)
        else:
            self.strings[key] = value


def _one(stream: IO[bytes], found: Walk, memo: _Memo) -> None:
    recent: deque[str | None] = deque(maxlen=2)  # the last two values pushed
    for opcode, arg, _pos in pickletools.genops(stream):
        name = opcode.name
        index = None if arg is None or name not in _MEMO_OPS else int(arg)
        if name in _PUTS:
            memo.put(index, recent[-1] if recent else None)
            continue
        if name in _NO_PUSH:
            continue
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            found.imports.add((module, attr))
        elif name == "STACK_GLOBAL":
            pushed = list(recent) if len(recent) == 2 else [None, None]
            found.imports.add((pushed[0] or UNKNOWN, pushed[1] or UNKNOWN))
        elif name in _EXTS:
            found.imports.add((UNKNOWN, f"extension code {arg}"))
        if name in _CALLS:
            found.calls = True
        if name in _STRINGS:
            recent.append(arg if isinstance(arg, str) and len(arg) <= _MAX_NAME else None)
        elif name in _GETS:
            recent.append(memo.strings.get(index) if index is not None else None)
        else:
            recent.append(None)


def judge(imports: Iterable[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[str]]:
    """Findings (severity, description) and errors for the imports a pickle makes."""
    findings: list[tuple[str, str]] = []
    errors: list[str] = []
    for module, name in sorted(imports):
        if module == "joblib.numpy_pickle" and name in _JOBLIB_WRAPPERS:
            errors.append(
                "joblib file with embedded raw array buffers cannot be verified by an "
                "opcode scanner; save the model with skops or ONNX instead"
            )
        elif deny_severity(module, name):
            findings.append(("critical", f"unsafe import '{module}.{name}' runs code when loaded"))
        elif not allowed(module, name):
            findings.append(("medium", f"import '{module}.{name}' is not on the allowlist"))
    return findings, errors


def deny_severity(module: str, name: str) -> str | None:
    """'critical' for imports that run code (picklescan's denylist and ours), else None."""
    from picklescan.scanner import _unsafe_globals

    if UNKNOWN in (module, name):
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


def allowed(module: str, name: str) -> bool:
    """Whether an import is one a scikit-learn model legitimately makes."""
    if name in ALLOWED_IMPORTS.get(module, ()):
        return True
    if module.split(".")[0] == "sklearn":
        return name[:1].isupper() and name.isidentifier()
    in_sparse = module == "scipy.sparse" or module.startswith("scipy.sparse.")
    return in_sparse and name in _SCIPY_SPARSE
