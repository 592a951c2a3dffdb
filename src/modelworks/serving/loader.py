"""Deploy config -> loaded model: extract the verified artifact, check its signature, load it."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelworks.errors import ArtifactError, ServingError, VerificationError
from modelworks.serving.cache import cache_dir_for
from modelworks.serving.runtimes import LoadedModel, load_model, read_metadata

if TYPE_CHECKING:
    from modelworks.gitops.deploy import DeployConfig
    from modelworks.workspace import Workspace

log = logging.getLogger("modelworks.serving")


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


class ModelLoader:
    """Loads models by digest from the workspace's OCI store (blocking: run it in a thread)."""

    def __init__(self, ws: Workspace, *, allow_pickle: bool = False) -> None:
        self.ws = ws
        self.cache_root = ws.state_dir / "serving-cache"
        self.allow_pickle = allow_pickle
        self._store: Any = None

    @property
    def store(self) -> Any:
        if self._store is None:
            oci = _optional("modelworks.artifacts.oci")
            if oci is None:
                raise ServingError("the OCI store module (modelworks.artifacts.oci) is missing")
            self._store = oci.OCIStore(self.ws.oci_dir)
        return self._store

    def materialize(self, digest: str, *, fresh: bool = False) -> Path:
        """The folder holding the digest's model files, extracted (verified) on first use.

        With fresh, an existing cache entry is dropped first and extracted again from the store.
        """
        dest = cache_dir_for(self.cache_root, digest)
        if fresh:
            self.drop(digest)
        elif dest.is_dir():  # extraction renames a complete folder into place
            return dest
        try:
            return Path(self.store.extract(digest, dest, exist_ok=True))
        except ArtifactError:
            raise
        except (OSError, KeyError, ValueError) as exc:
            raise ArtifactError(f"cannot extract artifact {digest}: {exc}") from None

    def drop(self, digest: str) -> None:
        """Remove the digest's cache entry: renamed aside first, so no reader sees half of it."""
        dest = cache_dir_for(self.cache_root, digest)
        if not dest.is_dir():
            return
        aside = Path(tempfile.mkdtemp(prefix=".tmp-drop-", dir=self.cache_root))
        with contextlib.suppress(FileNotFoundError):  # another thread dropped it first
            os.rename(dest, aside / dest.name)
        shutil.rmtree(aside, ignore_errors=True)

    def verify_signature(self, model_dir: Path) -> None:
        """Refuse a model folder whose signature does not verify with a trusted workspace key.

        The current public key is tried first, then retired ones (after `mw keys rotate`); a
        workspace with no public key is a ConfigError, never a silent unverified load.
        """
        from modelworks.artifacts.verify import verify_signature

        verify_signature(self.ws, model_dir)

    def metadata(self, cfg: DeployConfig) -> dict[str, Any]:
        """metadata.json of a deployed artifact, without loading the model."""
        return read_metadata(self.materialize(cfg.artifact_digest))

    def load(self, cfg: DeployConfig) -> LoadedModel:
        """Extract, verify and load the model a deploy config names.

        A cache entry that no longer matches its signature (a damaged disk, an edited file) is
        extracted again from the store, whose digests are checked on the way out.
        """
        cached = cache_dir_for(self.cache_root, cfg.artifact_digest).is_dir()
        model_dir = self.materialize(cfg.artifact_digest)
        try:
            self.verify_signature(model_dir)
        except VerificationError as exc:
            if not cached:
                raise
            log.warning("cache entry %s fails verification (%s); re-extracting", model_dir, exc)
            model_dir = self.materialize(cfg.artifact_digest, fresh=True)
            self.verify_signature(model_dir)
        return load_model(
            model_dir,
            name=cfg.name,
            version=cfg.version,
            digest=cfg.artifact_digest,
            runtime=cfg.runtime,
            allow_pickle=self.allow_pickle,
        )
