"""Recognising a file's format from its bytes (magic numbers, then structure), never its name.

``identify`` names the format a stream's first bytes announce. Strong magics (zip, gzip,
bz2, xz, zstd, lz4, npy, parquet, tar, a pickle protocol header) are trusted; weak ones
(zlib's two-byte header, lzma-alone's properties byte, a safetensors length prefix) are
only candidates, confirmed by reading on (``confirm_weak``). Everything else the scanner
judges as a pickle, as text, or as unknown. The streams here let it read nested content
once, bounded by a byte budget.
"""

from __future__ import annotations

import codecs
import io
import json
import struct
import zlib
from collections.abc import Callable
from typing import IO, Any

HEAD_BYTES = 512
ZIP, TAR, NPY, PARQUET, SAFETENSORS, PICKLE = (
    "zip",
    "tar",
    "npy",
    "parquet",
    "safetensors",
    "pickle",
)
GZIP, BZ2, XZ, LZMA, ZLIB, ZSTD, LZ4 = "gzip", "bz2", "xz", "lzma", "zlib", "zstd", "lz4"
COMPRESSED = frozenset({GZIP, BZ2, XZ, LZMA, ZLIB, ZSTD, LZ4})

_STRONG: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", ZIP),
    (b"PK\x05\x06", ZIP),  # an empty archive
    (b"PK\x07\x08", ZIP),  # a spanned archive's first part
    (b"\x1f\x8b", GZIP),
    (b"\xfd7zXZ\x00", XZ),
    (b"\x28\xb5\x2f\xfd", ZSTD),
    (b"\x04\x22\x4d\x18", LZ4),
    (b"\x93NUMPY", NPY),
    (b"PAR1", PARQUET),
)
_PICKLE_PROTOCOLS = frozenset(bytes([0x80, p]) for p in range(2, 6))
# C0 controls other than tab, newlines, form feed and escape never occur in text files.
_CONTROL = bytes([*range(0x00, 0x09), *range(0x0E, 0x1B), *range(0x1C, 0x20)])
_CHUNK = 1 << 20


def sniff(head: bytes) -> str:
    """The format `head` (a stream's first bytes) announces by a strong magic, or ""."""
    for magic, name in _STRONG:
        if head.startswith(magic):
            return name
    if head.startswith(b"BZh") and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return BZ2
    if head[257:262] == b"ustar":
        return TAR
    if head[:2] in _PICKLE_PROTOCOLS:
        return PICKLE
    return ""


def weak_candidates(head: bytes) -> list[str]:
    """Formats whose weak magic `head` matches, to be confirmed by reading on."""
    found = []
    if len(head) >= 10 and head[8:9] == b"{":
        found.append(SAFETENSORS)  # a little-endian header length, then the JSON header
    if len(head) >= 13 and head[0] <= 224 and head[1:3] == b"\x00\x00":
        found.append(LZMA)  # lzma-alone: properties byte, then a little-endian dictionary size
    if len(head) >= 2 and _zlib_header(head[0], head[1]):
        found.append(ZLIB)
    return found


def identify(head: bytes, stream: IO[bytes], size: int | None) -> str:
    """The format of a stream: its strong magic, else a confirmed weak one, else ""."""
    kind = sniff(head)
    if kind:
        return kind
    for candidate in weak_candidates(head):
        if confirm_weak(candidate, stream, size):
            return candidate
    return ""


def _zlib_header(cmf: int, flg: int) -> bool:
    """Deflate, a window of at most 32 KiB, no preset dictionary, and the header check."""
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and not flg & 0x20 and (cmf << 8 | flg) % 31 == 0


def confirm_weak(kind: str, stream: IO[bytes], size: int | None) -> bool:
    """Whether a weak magic really starts that format (the stream is left at its start)."""
    try:
        if kind == SAFETENSORS:
            return safetensors_header(stream, size) is not None
        head = stream.read(1 << 16)
        if kind == ZLIB:
            return bool(zlib.decompressobj().decompress(head, 1 << 16))
        import lzma

        return bool(lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(head, 1 << 16))
    except Exception:  # any decoder complaint means "not this format"
        return False
    finally:
        stream.seek(0)


def safetensors_header(stream: IO[bytes], size: int | None) -> dict[str, Any] | None:
    """The JSON header of a safetensors file whose tensors lie inside it, else None."""
    prefix = stream.read(8)
    if len(prefix) < 8:
        return None
    (length,) = struct.unpack("<Q", prefix)
    if size is None or not 2 <= length <= min(size - 8, 100 << 20):
        return None
    try:
        header = json.loads(stream.read(length))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2):
            return None
        start, end = offsets
        if not (isinstance(start, int) and isinstance(end, int)):
            return None
        if not 0 <= start <= end <= size - 8 - length:
            return None
    return header


def parquet_footer_ok(stream: IO[bytes], size: int | None) -> bool:
    """Whether a stream that starts with PAR1 also ends with a parquet footer."""
    if size is None or size < 12:
        return False
    stream.seek(size - 8)
    tail = stream.read(8)
    (length,) = struct.unpack("<I", tail[:4])
    return tail[4:] == b"PAR1" and 0 < length <= size - 12


def is_text(stream: IO[bytes]) -> bool:
    """Whether the whole stream is UTF-8 text without binary control bytes (read in chunks)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    while chunk := stream.read(_CHUNK):
        if len(chunk.translate(None, _CONTROL)) != len(chunk):
            return False
        if chunk.isascii() and not decoder.getstate()[0]:
            continue  # ASCII is UTF-8; skip building the str
        try:
            decoder.decode(chunk)
        except UnicodeDecodeError:
            return False
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


class LimitError(Exception):
    """Nested content went past a scan limit (depth, expanded bytes, member count)."""


class Budget:
    """Bytes that decompression and archive members may still expand to, over one scan."""

    def __init__(self, max_bytes: int, max_members: int) -> None:
        self.left = max_bytes
        self.max_bytes = max_bytes
        self.members_left = max_members
        self.max_members = max_members

    def charge(self, n: int, where: str) -> None:
        self.left -= n
        if self.left < 0:
            raise LimitError(
                f"{where}: expands past the scan limit of {self.max_bytes} bytes (a zip bomb?); "
                "raise scan.max_expanded_bytes if the model really is this large"
            )

    def members(self, n: int, where: str) -> None:
        self.members_left -= n
        if self.members_left < 0:
            raise LimitError(
                f"{where}: more than {self.max_members} archive members in one scan; "
                "raise scan.max_members if the model really has this many files"
            )


class Limited(io.RawIOBase):
    """A seekable view of an expanding stream that charges new bytes to a Budget."""

    def __init__(self, inner: IO[bytes], budget: Budget, where: str) -> None:
        self.inner, self.budget, self.where = inner, budget, where
        self.pos = self.high = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        room = self.high - self.pos + max(self.budget.left, 0) + 1
        view = memoryview(buffer)[:room]
        data = self.inner.read(len(view))
        n = len(data)
        view[:n] = data
        self.pos += n
        if self.pos > self.high:
            self.budget.charge(self.pos - self.high, self.where)
            self.high = self.pos
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = self.inner.seek(offset, whence)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self.inner.close()
        super().close()


class Inflating(io.RawIOBase):
    """A seekable view of a decompressing reader (restarted from the source to seek back)."""

    def __init__(self, source: IO[bytes], opener: Callable[[IO[bytes]], Any]) -> None:
        self.source, self.opener = source, opener
        self._restart()

    def _restart(self) -> None:
        self.source.seek(0)
        self.reader = self.opener(self.source)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        data = self.reader.read(len(view)) if len(view) else b""
        view[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET:
            raise io.UnsupportedOperation("only absolute seeks")
        if offset < self.pos:
            self._restart()
        while self.pos < offset and self.read(min(offset - self.pos, _CHUNK)):
            pass
        return self.pos

    def tell(self) -> int:
        return self.pos


class _ZlibReader:
    """zlib decompression that never returns more than asked for (a bomb stays small)."""

    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.inflate = zlib.decompressobj()

    def read(self, n: int) -> bytes:
        out = b""
        while not out and not self.inflate.eof:
            data = self.inflate.unconsumed_tail or self.source.read(_CHUNK)
            if not data:
                raise EOFError("zlib stream ends before its end marker")
            out = self.inflate.decompress(data, n)
        return out


def decompressed(kind: str, source: IO[bytes]) -> IO[bytes]:
    """A seekable stream of `source` decompressed; LookupError when the codec is missing."""
    if kind == GZIP:
        import gzip

        return gzip.GzipFile(fileobj=source, mode="rb")  # type: ignore[return-value]
    if kind == BZ2:
        import bz2

        return bz2.BZ2File(source)
    if kind in (XZ, LZMA):
        import lzma

        return lzma.LZMAFile(source, format=lzma.FORMAT_XZ if kind == XZ else lzma.FORMAT_ALONE)
    if kind == ZLIB:
        return io.BufferedReader(Inflating(source, _ZlibReader))
    return _optional_codec(kind, source)


def _optional_codec(kind: str, source: IO[bytes]) -> IO[bytes]:
    """A zstd or lz4 reader from whichever module is installed."""
    try:
        if kind == LZ4:
            import lz4.frame

            return lz4.frame.LZ4FrameFile(source)  # type: ignore[no-any-return]
        try:
            from compression import zstd

            return zstd.ZstdFile(source)  # type: ignore[no-any-return]
        except ImportError:
            import zstandard

            def reader(s: IO[bytes]) -> Any:
                return zstandard.ZstdDecompressor().stream_reader(s, read_across_frames=True)

            return io.BufferedReader(Inflating(source, reader))
    except ImportError:
        module = "zstandard" if kind == ZSTD else "lz4"
        raise LookupError(
            f"{kind}-compressed content cannot be verified: the {module} module is not installed"
        ) from None
