"""The sampled prediction log: served inputs and outputs per model, as Parquet files.

Layout, one folder per model (the name percent-encoded, so "acme/churn" is
"acme%2Fchurn") and one per UTC day::

    <root>/acme%2Fchurn/2026-11-23/part-<uuid>.parquet

Each file has the columns ts (timestamp, UTC), model, version, one column per
feature (the feature names, or f0..fn; a name that clashes with ts, model,
version or output is stored as "feature.<name>", made unique), then output (a number or
string, or a fixed-size list for 2-D outputs). The feature names are also kept
in the schema metadata, so readers take them from there and by position.

Appending only buffers the arrays (a few microseconds); a background thread
writes them on size (flush_rows) and on time (flush_seconds), and close()
writes the rest. A file is written under a temporary dot-name and renamed into
place, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from modelworks.errors import DataError, ModelworksError
from modelworks.monitor.profile import as_numeric

log = logging.getLogger(__name__)

RESERVED = ("ts", "model", "version", "output")
META_KEY = b"modelworks.features"
_DAY_US = 86_400_000_000
_MAX_BUFFERED = 20  # times flush_rows: past this, rows are dropped rather than queued


class PredictionLog:
    """A thread-safe, buffered writer of served inputs and outputs."""

    def __init__(self, root: Path, *, flush_rows: int = 1000, flush_seconds: float = 5.0) -> None:
        self._writer = _Writer(Path(root), flush_rows, flush_seconds)
        # Flush what is buffered when the log is garbage-collected or the interpreter exits.
        self._finalizer = weakref.finalize(self, self._writer.close)

    @property
    def root(self) -> Path:
        """The folder the log writes under."""
        return self._writer.root

    @property
    def dropped(self) -> int:
        """Rows dropped because the writer fell behind or a write failed."""
        return self._writer.dropped

    def append(
        self,
        model: str,
        version: str,
        inputs: np.ndarray,
        outputs: np.ndarray,
        *,
        feature_names: list[str] | None = None,
    ) -> None:
        """Buffer one row per input row; cheap enough for the request path."""
        self._writer.append(model, version, inputs, outputs, feature_names)

    def flush(self) -> None:
        """Write everything buffered now; raise DataError if a file cannot be written."""
        self._writer.flush()

    def close(self) -> None:
        """Stop the background thread and write what is left."""
        self._finalizer()

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_log(
    root: Path,
    model: str,
    *,
    since: datetime | None = None,
    version: str | None = None,
    limit: int | None = None,
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Read a model's logged inputs, oldest first: (X, feature_names, info).

    `since` keeps rows logged at or after it (a naive datetime is local time);
    `version` keeps one model version; `limit` keeps the newest rows. When files
    disagree on the features, the newest file's features win and the others count
    as skipped. info = {"rows", "versions", "files", "skipped"}.
    """
    if limit is not None and limit < 0:
        raise DataError(f"read_log: limit must be >= 0, got {limit}")
    since_us = _to_us(since) if since is not None else None
    parts, skipped, files = [], 0, 0
    for path in _part_files(Path(root) / model_dir(model), since_us):
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException):
            skipped += 1
            continue
        files += 1
        part = _read_part(table, since_us, version)
        if part is not None:
            parts.append(part)
    return _combine(parts, files, skipped, limit)


def logged_models(root: Path) -> list[str]:
    """The names of the models that have a prediction log under root."""
    root = Path(root)
    if not root.is_dir():
        return []
    names = [unquote(p.name) for p in root.iterdir() if p.is_dir() and p.name[:1] != "."]
    return sorted(names)


def model_dir(model: str) -> str:
    """The folder name of a model: percent-encoded, '/' and '.' included."""
    if not isinstance(model, str) or not model:
        raise DataError(f"prediction log: model name must be a non-empty string, got {model!r}")
    encoded = quote(model, safe="").replace(".", "%2E")
    if len(encoded) > 255:
        raise DataError(f"prediction log: model name is too long for a folder: {model[:40]}...")
    return encoded


class _Writer:
    """The buffer, the flushing thread and the files; PredictionLog is its handle."""

    def __init__(self, root: Path, flush_rows: int, flush_seconds: float) -> None:
        if flush_rows < 1 or flush_seconds <= 0:
            raise DataError(
                f"prediction log: flush_rows must be >= 1 and flush_seconds > 0, "
                f"got {flush_rows} and {flush_seconds}"
            )
        self.root = root
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.dropped = 0
        self._chunks: list[tuple[Any, ...]] = []
        self._rows = 0
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._checked_names: set[tuple[str, ...]] = set()
        self._dirs: dict[str, str] = {}

    def append(
        self,
        model: str,
        version: str,
        inputs: Any,
        outputs: Any,
        names: list[str] | None,
    ) -> None:
        if model not in self._dirs:
            self._dirs[model] = model_dir(model)
        x, y = _check_arrays(model, inputs, outputs)
        key = tuple(names) if names is not None else None
        if key is not None and (key not in self._checked_names or len(key) != x.shape[1]):
            _check_names(model, key, x.shape[1])
            self._checked_names.add(key)
        chunk = (model, str(version), time.time_ns() // 1000, x, y, key)
        with self._lock:
            if self._closed:
                raise DataError(f"prediction log {self.root} is closed")
            if self._rows >= _MAX_BUFFERED * self.flush_rows:
                self.dropped += len(x)
                return
            self._chunks.append(chunk)
            self._rows += len(x)
            full = self._rows >= self.flush_rows
            if self._thread is None:
                self._start_thread()
        if full:
            self._wake.set()

    def flush(self) -> None:
        with self._flush_lock:
            with self._lock:
                chunks, self._chunks, self._rows = self._chunks, [], 0
            if chunks:
                self._write_all(chunks)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self.flush()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mw-predlog-flush", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._closed:
                return
            try:
                self.flush()
            except ModelworksError as exc:
                log.warning("%s", exc)
            except Exception:  # the flushing thread must outlive any one bad batch
                log.exception("prediction log flush failed under %s", self.root)

    def _write_all(self, chunks: list[tuple[Any, ...]]) -> None:
        groups: dict[tuple[Any, ...], list[tuple[Any, ...]]] = defaultdict(list)
        for chunk in chunks:
            groups[_group_key(chunk)].append(chunk)
        errors = []
        for group in groups.values():
            try:
                _write_file(self.root, group)
            except (OSError, pa.ArrowException, ValueError, TypeError) as exc:
                with self._lock:
                    self.dropped += sum(len(c[3]) for c in group)
                errors.append(f"cannot write the prediction log of '{group[0][0]}': {exc}")
        if errors:
            raise DataError("; ".join(errors))


def _check_arrays(model: str, inputs: Any, outputs: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.array(inputs)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    y = np.array(outputs)
    if y.ndim == 0:
        y = y.reshape(1)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if x.ndim != 2 or y.ndim > 2 or y.shape[0] != x.shape[0]:
        raise DataError(
            f"prediction log of '{model}': expected inputs (rows, features) and outputs "
            f"with the same rows, got {x.shape} and {np.shape(outputs)}"
        )
    return x, y


def _check_names(model: str, names: tuple[str, ...], width: int) -> None:
    if len(names) != width:
        raise DataError(
            f"prediction log of '{model}': {len(names)} feature names for {width} input columns"
        )
    if not all(isinstance(name, str) and name for name in names):
        raise DataError(
            f"prediction log of '{model}': feature names must be non-empty strings, "
            f"got {list(names)}"
        )
    if len(set(names)) != len(names):
        raise DataError(f"prediction log of '{model}': duplicate feature names in {list(names)}")


def _kind(arr: np.ndarray) -> str:
    kind = arr.dtype.kind
    return "f" if kind in "iuf" else ("b" if kind == "b" else "O")


def _group_key(chunk: tuple[Any, ...]) -> tuple[Any, ...]:
    model, _, ts, x, y, names = chunk
    return (model, ts // _DAY_US, names, x.shape[1], _kind(x), y.shape[1:], _kind(y))


def _write_file(root: Path, group: list[tuple[Any, ...]]) -> None:
    table = _to_table(group)
    day = datetime.fromtimestamp(group[0][2] / 1e6, UTC).strftime("%Y-%m-%d")
    folder = root / model_dir(group[0][0]) / day
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{uuid.uuid4().hex}.parquet"
    tmp = folder / f".{name}.tmp"
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / name)
    finally:
        tmp.unlink(missing_ok=True)


def _to_table(group: list[tuple[Any, ...]]) -> pa.Table:
    counts = [len(c[3]) for c in group]
    x = np.concatenate([c[3] for c in group]) if len(group) > 1 else group[0][3]
    y = np.concatenate([c[4] for c in group]) if len(group) > 1 else group[0][4]
    width = x.shape[1]
    names = list(group[0][5] or [f"f{j}" for j in range(width)])
    ts = np.repeat(np.array([c[2] for c in group], dtype=np.int64), counts)
    arrays = [
        pa.array(ts, pa.timestamp("us", tz="UTC")),
        pa.array(np.repeat(np.array([c[0] for c in group], dtype=object), counts)),
        pa.array(np.repeat(np.array([c[1] for c in group], dtype=object), counts)),
        *(_to_arrow(x[:, j]) for j in range(width)),
        _output_to_arrow(y),
    ]
    table = pa.Table.from_arrays(arrays, names=[*RESERVED[:3], *_column_names(names), "output"])
    return table.replace_schema_metadata({META_KEY: json.dumps(names).encode()})


def _column_names(names: list[str]) -> list[str]:
    """Feature column names, renamed where they would clash with ts/model/version/output."""
    taken = set(RESERVED) | set(names)
    columns = []
    for j, name in enumerate(names):
        column = name
        if name in RESERVED:
            column = f"feature.{name}"
            while column in taken:
                column = f"feature{j}.{column}"
            taken.add(column)
        columns.append(column)
    return columns


def _to_arrow(col: np.ndarray) -> pa.Array:
    kind = col.dtype.kind
    if kind in "iuf":
        return pa.array(np.ascontiguousarray(col, dtype=np.float64))
    if kind == "b":
        return pa.array(np.ascontiguousarray(col))
    numeric = as_numeric(col) if kind == "O" else None
    if numeric is not None:
        return pa.array(numeric)
    values = col.tolist()
    if kind == "O" and all(v is None or isinstance(v, (bool, np.bool_)) for v in values):
        return pa.array(values, pa.bool_())
    return pa.array([None if v is None else _text(v) for v in values], pa.string())


def _output_to_arrow(y: np.ndarray) -> pa.Array:
    if y.ndim == 1:
        return _to_arrow(y)
    flat = _to_arrow(y.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, y.shape[1])


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _to_us(when: datetime) -> int:
    return int(when.astimezone(UTC).timestamp() * 1_000_000)


def _part_files(folder: Path, since_us: int | None) -> list[Path]:
    if not folder.is_dir():
        return []
    first_day = None
    if since_us is not None:
        first_day = datetime.fromtimestamp(since_us / 1e6, UTC).strftime("%Y-%m-%d")
    files = []
    for day in sorted(folder.iterdir()):
        if day.name[:1] == "." or not day.is_dir():
            continue
        if first_day is not None and day.name < first_day:
            continue
        files.extend(sorted(day.glob("part-*.parquet")))
    return files


def _read_part(
    table: pa.Table, since_us: int | None, version: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]] | None:
    names = _feature_names(table)
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    versions = np.asarray(table.column("version").to_pylist(), dtype=object)
    keep = np.ones(len(ts), dtype=bool)
    if since_us is not None:
        keep &= ts >= since_us
    if version is not None:
        keep &= versions == version
    if not keep.any():
        return None
    columns = [_from_arrow(table.column(3 + j)) for j in range(len(names))]
    X = _stack(columns, len(ts))
    return ts[keep], versions[keep], X[keep], names


def _feature_names(table: pa.Table) -> list[str]:
    meta = table.schema.metadata or {}
    if META_KEY in meta:
        return [str(n) for n in json.loads(meta[META_KEY])]
    return list(table.column_names[3:-1])


def _from_arrow(col: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
        return np.asarray(col.to_numpy(), dtype=np.float64)
    return np.asarray(col.to_pylist(), dtype=object)


def _stack(columns: list[np.ndarray], rows: int) -> np.ndarray:
    if not columns:
        return np.zeros((rows, 0))
    if all(c.dtype == np.float64 for c in columns):
        return np.column_stack(columns)
    out = np.empty((rows, len(columns)), dtype=object)
    for j, col in enumerate(columns):
        out[:, j] = col
    return out


def _combine(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]],
    files: int,
    skipped: int,
    limit: int | None,
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    if not parts:
        info = {"rows": 0, "versions": [], "files": files, "skipped": skipped}
        return np.zeros((0, 0)), [], info
    names = max(parts, key=lambda p: p[0].max())[3]
    same = [p for p in parts if p[3] == names]
    skipped += len(parts) - len(same)
    ts = np.concatenate([p[0] for p in same])
    versions = np.concatenate([p[1] for p in same])
    dtype = np.float64 if all(p[2].dtype == np.float64 for p in same) else object
    X = np.concatenate([p[2].astype(dtype, copy=False) for p in same])
    order = np.argsort(ts, kind="stable")
    if limit is not None:
        order = order[max(len(order) - limit, 0) :]
    X, versions = X[order], versions[order]
    info = {
        "rows": len(X),
        "versions": sorted(set(versions.tolist())),
        "files": files,
        "skipped": skipped,
    }
    return X, list(names), info
