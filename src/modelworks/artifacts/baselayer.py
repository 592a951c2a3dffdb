"""The ModelCar base layer: a static busybox, so KServe's modelcar sidecar can run.

KServe starts a ModelCar as a sidecar with ``sh -c "ln -s /proc/$$/root/models /mnt/models &&
sleep infinity"``, so the image needs ``sh``, ``ln`` and ``sleep``. ``oci.base_image`` says
where they come from:

- ``auto`` (the default): ``busybox`` when a static busybox is installed, else ``none`` with a
  warning (a laptop without Debian's busybox-static still runs the line);
- ``busybox``: the statically linked busybox of Debian's ``busybox-static``
  (``/bin/busybox``), as one layer holding ``bin/busybox`` and the symlinks ``bin/sh``,
  ``bin/ln`` and ``bin/sleep``;
- an absolute path: a statically linked busybox binary of your own, the same way;
- ``none``: a model-only artifact (one layer, ``models/``), which KServe cannot run as a
  ModelCar but any OCI tool can read.

The layer is a deterministic tar (mtime 0, owner 0:0, fixed modes), so the same binary
always gives the same blob; it is built once per binary and shared by every image of the
store (``<store>/base/busybox-<sha256 of the binary>.json`` remembers its digest).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import struct
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelworks.errors import ArtifactError

log = logging.getLogger("modelworks.artifacts")

if TYPE_CHECKING:
    from modelworks.artifacts.oci import OCIStore

BASE_AUTO = "auto"
BASE_BUSYBOX = "busybox"
BASE_NONE = "none"
BUSYBOX_PATHS = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
APPLETS = ("ln", "sh", "sleep")
ROLE_ANNOTATION = "dev.modelworks.layer"
IMAGE_ENV = ["PATH=/bin"]
_FORMAT = 1  # bump when the layer's layout changes
_VERSION = re.compile(rb"BusyBox v(\d+(?:\.\d+)+)(?: \(Debian ([^)\s]+)\))?")
# ELF e_machine -> OCI architecture
_MACHINES = {62: "amd64", 183: "arm64", 40: "arm", 3: "386", 21: "ppc64le", 22: "s390x"}
_PT_INTERP = 3
_HASHES: dict[tuple[str, int, int, int, int], str] = {}


@dataclass(frozen=True)
class BaseLayer:
    """A built base layer and what the SBOM says about it."""

    digest: str
    size: int
    binary_sha256: str
    name: str
    version: str
    purl: str

    def descriptor(self) -> dict[str, Any]:
        """The layer's OCI descriptor, marked as the base (the model layer is the other one)."""
        from modelworks.artifacts.oci import LAYER_TYPE

        return {
            "mediaType": LAYER_TYPE,
            "digest": self.digest,
            "size": self.size,
            "annotations": {ROLE_ANNOTATION: "base"},
        }

    def component(self) -> dict[str, Any]:
        """The layer's binary as a CycloneDX 1.5 component."""
        return {
            "type": "application",
            "bom-ref": self.purl,
            "name": self.name,
            "version": self.version,
            "purl": self.purl,
            "hashes": [{"alg": "SHA-256", "content": self.binary_sha256}],
            "properties": [{"name": "modelworks:oci-base-layer", "value": self.digest}],
        }


def effective_setting(value: str, architecture: str = "amd64") -> str:
    """What `auto` (the default) means on this machine: `busybox` when a static busybox is
    installed (Debian's busybox-static), else `none` (model-only images) with a warning, so a
    laptop without it still runs the line. Other values are returned as they are."""
    if value != BASE_AUTO:
        return value
    for path in BUSYBOX_PATHS:
        if path.is_file():
            try:
                _check_static(path, path.read_bytes(), architecture)
            except ArtifactError:
                continue
            return BASE_BUSYBOX
    log.warning(
        "oci.base_image is 'auto' and no static busybox is installed: building model-only "
        "images, which KServe cannot run as ModelCars (apt-get install busybox-static, or set "
        "oci.base_image: none to silence this)"
    )
    return BASE_NONE


def check_setting(value: str) -> str:
    """`value` if it is a valid oci.base_image, else raise ArtifactError saying what is."""
    if value in (BASE_AUTO, BASE_BUSYBOX, BASE_NONE) or os.path.isabs(value):
        return value
    raise ArtifactError(
        f"oci.base_image {value!r}: expected 'auto', 'busybox' (Debian's busybox-static), "
        "'none' "
        "(model-only images) or the absolute path of a statically linked busybox"
    )


def base_layer(store: OCIStore, setting: str | None) -> BaseLayer | None:
    """The base layer `setting` asks for, built into `store` once; None for 'none'."""
    setting = effective_setting(check_setting(setting or BASE_AUTO), store.architecture)
    if setting == BASE_NONE:
        return None
    binary = _find(setting)
    st = binary.stat()
    memo = (str(store.root), str(binary), store.architecture, st.st_ino, st.st_size, st.st_mtime_ns)
    known = _BUILT.get(memo)
    if known is not None:
        try:
            age = time.time() - store.blob_path(known.digest).stat().st_mtime
        except FileNotFoundError:
            age = None  # collected by `mw gc` since: build it again
        if age is not None:
            if age > _TOUCH_SECONDS:
                os.utime(store.blob_path(known.digest))  # in use again: not old enough for gc
            return known
    built = _base_layer(store, binary)
    _BUILT[memo] = built
    return built


# The layer each (store, binary) gave in this process: the line asks once per model.
_BUILT: dict[tuple[str, str, str, int, int, int], BaseLayer] = {}
_TOUCH_SECONDS = 60.0


def _base_layer(store: OCIStore, binary: Path) -> BaseLayer:
    data = binary.read_bytes()
    _check_static(binary, data, store.architecture)
    sha = _hash(binary, data)
    record = store.root / "base" / f"busybox-{sha}-{_FORMAT}.json"
    cached = _cached(store, record)
    if cached is not None:
        return cached
    layer = _layer_bytes(data)
    digest = store.put_blob(layer)
    name, version, purl = _identify(data, store.architecture)
    built = BaseLayer(digest, len(layer), sha, name, version, purl)
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f".{record.name}.{os.getpid()}")
    tmp.write_text(json.dumps(asdict(built)))
    tmp.replace(record)
    return built


def _find(setting: str) -> Path:
    if setting != BASE_BUSYBOX:
        path = Path(setting)
        if not path.is_file():
            raise ArtifactError(f"oci.base_image {setting!r}: no such file")
        return path
    for path in BUSYBOX_PATHS:
        if path.is_file():
            return path
    raise ArtifactError(
        "oci.base_image is 'busybox', but there is no busybox at "
        f"{' or '.join(map(str, BUSYBOX_PATHS))}: install Debian's busybox-static "
        "(apt-get install busybox-static), or set `oci.base_image: none` in modelworks.yaml "
        "for model-only images (KServe cannot run those as ModelCars)"
    )


def _check_static(path: Path, data: bytes, architecture: str) -> None:
    """Refuse anything but a statically linked ELF executable for `architecture`."""
    if data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        raise ArtifactError(f"oci.base_image: {path} is not an ELF executable")
    bits64, order = data[4] == 2, "<" if data[5] == 1 else ">"
    machine = struct.unpack_from(f"{order}H", data, 18)[0]
    if _MACHINES.get(machine) != architecture:
        raise ArtifactError(
            f"oci.base_image: {path} is built for {_MACHINES.get(machine, machine)!r}, "
            f"but the images are {architecture!r}"
        )
    if bits64:
        phoff, (phentsize, phnum) = (
            _u(data, order, "Q", 32),
            struct.unpack_from(f"{order}HH", data, 54),
        )
    else:
        phoff, (phentsize, phnum) = (
            _u(data, order, "I", 28),
            struct.unpack_from(f"{order}HH", data, 42),
        )
    for i in range(phnum):
        if _u(data, order, "I", phoff + i * phentsize) == _PT_INTERP:
            raise ArtifactError(
                f"oci.base_image: {path} is dynamically linked (it needs a loader the image "
                "does not have); use a statically linked busybox such as Debian's "
                "busybox-static"
            )


def _u(data: bytes, order: str, fmt: str, offset: int) -> int:
    value: int = struct.unpack_from(f"{order}{fmt}", data, offset)[0]
    return value


def _hash(path: Path, data: bytes) -> str:
    st = path.stat()
    key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = hashlib.sha256(data).hexdigest()
    return _HASHES[key]


def _cached(store: OCIStore, record: Path) -> BaseLayer | None:
    try:
        layer = BaseLayer(**json.loads(record.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if not store.has_blob(layer.digest):
        return None  # collected by `mw gc` since: build it again
    os.utime(store.blob_path(layer.digest))  # in use again: not old enough for gc
    return layer


def _layer_bytes(binary: bytes) -> bytes:
    """bin/busybox and its applet symlinks as a deterministic, uncompressed tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_info("bin", tarfile.DIRTYPE, 0o755))
        info = _info("bin/busybox", tarfile.REGTYPE, 0o755)
        info.size = len(binary)
        tar.addfile(info, io.BytesIO(binary))
        for applet in APPLETS:
            link = _info(f"bin/{applet}", tarfile.SYMTYPE, 0o777)
            link.linkname = "busybox"
            tar.addfile(link)
    return buf.getvalue()


def _info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _identify(binary: bytes, architecture: str) -> tuple[str, str, str]:
    """(name, version, purl) of the busybox: Debian's package when its banner says so."""
    from packageurl import PackageURL

    match = _VERSION.search(binary)
    if match is None:
        raise ArtifactError("oci.base_image: the binary has no 'BusyBox v…' banner")
    upstream, debian = match.group(1).decode(), match.group(2)
    if debian:
        version = debian.decode()
        purl = PackageURL("deb", "debian", "busybox-static", version, {"arch": architecture})
        return "busybox-static", version, purl.to_string()
    return "busybox", upstream, PackageURL("generic", None, "busybox", upstream).to_string()
