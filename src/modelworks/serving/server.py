"""The server's model state: entries from Git, lazy loads by digest, atomic version swaps."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar

from modelworks.errors import ModelworksError, NotFoundError, ServingError, did_you_mean
from modelworks.gitops.attest import Refusal, approved_env, is_gated, record_refusals
from modelworks.serving.cache import ModelCache, digest_hex
from modelworks.serving.loader import ModelLoader
from modelworks.serving.metrics import ServingMetrics
from modelworks.serving.reconcile import (
    ModelEntry,
    ModelKey,
    ReconcileResult,
    apply_desired,
    read_desired,
    referenced_digests,
    resolve_ref,
)
from modelworks.serving.runtimes import PLATFORMS
from modelworks.tenancy.access import DEFAULT_TENANT
from modelworks.tenancy.names import qualified

if TYPE_CHECKING:
    from modelworks.gitops.deploy import DeployConfig
    from modelworks.serving.runtimes import LoadedModel
    from modelworks.workspace import Workspace

log = logging.getLogger("modelworks.serving")


class ModelUnavailableError(ServingError):
    """The model is deployed but no version of it can be loaded."""

    status: ClassVar[int] = 503


class ModelServer:
    """Everything `mw serve` knows: desired models, failures, and the LRU of loaded ones."""

    def __init__(
        self, ws: Workspace, env: str, *, ref: str, max_memory: int, allow_pickle: bool = False
    ) -> None:
        self.ws, self.env, self.ref = ws, env, ref
        self.metrics = ServingMetrics()
        self.cache = ModelCache(max_memory, on_evict=self._evicted)
        self.loader = ModelLoader(ws, allow_pickle=allow_pickle)
        self.entries: dict[ModelKey, ModelEntry] = {}
        self.failed: dict[str, ModelworksError] = {}
        self.commit: str | None = None
        self._loading: dict[str, asyncio.Future[LoadedModel]] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reconcile_lock: asyncio.Lock | None = None
        self._seen_refusals: set[tuple[str, str]] = set()

    # -- reconcile ---------------------------------------------------------------------------

    def _read(self, force: bool) -> tuple[str, dict[str, DeployConfig] | None]:
        commit = resolve_ref(self.ws.deploy_repo, self.ref)
        if commit == self.commit and not force:
            return commit, None
        if not is_gated(self.ws, self.env):
            return commit, read_desired(self.ws.deploy_repo, self.env, commit)
        check = approved_env(self.ws, self.env, commit)
        self._refused(check.refused)
        return commit, check.configs

    def _refused(self, refused: list[Refusal]) -> None:
        """Log, count and audit the configs of a gated env that were not approved."""
        self.metrics.set_unapproved(self.env, [r.model for r in refused])
        new = [r for r in refused if (r.model, r.commit) not in self._seen_refusals]
        for r in refused:
            log.warning("%s: %s", self.env, r.message())
        self._seen_refusals = {(r.model, r.commit) for r in refused}
        if new:
            record_refusals(self.ws, self.env, new, actor="mw serve")

    def reconcile_now(self) -> ReconcileResult:
        """Read Git and update the desired set without loading anything (used at start)."""
        commit, configs = self._read(force=True)
        result = ReconcileResult(commit=commit)
        self._apply(commit, configs or {}, result)
        return result

    def _apply(
        self, commit: str, configs: dict[str, DeployConfig], result: ReconcileResult
    ) -> list[tuple[ModelEntry, DeployConfig]]:
        for cfg in configs.values():
            digest_hex(cfg.artifact_digest)  # refuse a malformed digest before it reaches a path
        changes = apply_desired(self.entries, configs, result)
        self.commit = commit
        for name in result.added:
            log.info("model %s deployed", name)
        for change in result.changed:
            log.info("model %s: version %s -> %s", change["name"], change["from"], change["to"])
        for name in result.removed:
            log.info("model %s removed from %s: unloading", name, self.env)
        self._unload_unreferenced()
        return changes

    async def reconcile(self, *, retry_failed: bool = False) -> ReconcileResult:
        """Re-read Git at the ref, apply changes, and eagerly load new versions of loaded models."""
        if self._reconcile_lock is None:
            self._reconcile_lock = asyncio.Lock()
        async with self._reconcile_lock:
            if retry_failed:
                self.failed.clear()
            try:
                commit, configs = await asyncio.to_thread(self._read, retry_failed)
            except ModelworksError as exc:
                log.error("reconcile of %s failed: %s", self.env, exc)
                return ReconcileResult(commit=self.commit, error=str(exc))
            result = ReconcileResult(commit=commit)
            if configs is None:
                result.unchanged = len(self.entries)
                return result
            changes = self._apply(commit, configs, result)
            await self._eager_loads(changes, result)
            return result

    async def _eager_loads(
        self, changes: list[tuple[ModelEntry, DeployConfig]], result: ReconcileResult
    ) -> None:
        todo = [
            entry
            for entry, previous in changes
            if self.cache.peek(previous.artifact_digest) is not None
            or (entry.good is not None and self.cache.peek(entry.good.artifact_digest))
        ]
        outcomes = await asyncio.gather(
            *(self.ensure(e.desired) for e in todo), return_exceptions=True
        )
        for entry, outcome in zip(todo, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                result.failed[entry.label] = str(outcome)
            else:
                result.loaded.append(entry.label)

    # -- loading -----------------------------------------------------------------------------

    async def ensure(self, cfg: DeployConfig) -> LoadedModel:
        """The loaded model of `cfg`, loading it (once, in a thread) if needed."""
        digest = cfg.artifact_digest
        model = self.cache.get(digest)
        if model is not None:
            return model
        if digest in self.failed:
            raise self.failed[digest].with_traceback(None)
        pending = self._loading.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._load(cfg))
            self._loading[digest] = pending
            pending.add_done_callback(lambda _f: self._loading.pop(digest, None))
        return await asyncio.shield(pending)

    async def _load(self, cfg: DeployConfig) -> LoadedModel:
        start = time.perf_counter()
        try:
            model = await asyncio.to_thread(self.loader.load, cfg)
        except Exception as exc:
            err = self._failure(cfg, exc)
            self.failed[cfg.artifact_digest] = err
            self.metrics.load_failures.labels(cfg.name, cfg.tenant or DEFAULT_TENANT).inc()
            log.error("%s", err)
            raise err from None
        self.metrics.load_time.labels(cfg.runtime).observe(time.perf_counter() - start)
        self._meta[cfg.artifact_digest] = model.metadata
        self.cache.put(model)
        self._loaded(cfg)
        return model

    def _failure(self, cfg: DeployConfig, exc: Exception) -> ModelworksError:
        name = qualified(cfg.tenant, cfg.name)
        what = f"{name} version {cfg.version} ({cfg.artifact_digest[:19]}...)"
        if isinstance(exc, ModelworksError):
            return ModelUnavailableError(f"{what} refused: {exc}")
        return ModelUnavailableError(f"{what} failed to load: {type(exc).__name__}: {exc}")

    def _loaded(self, cfg: DeployConfig) -> None:
        for entry in self.entries.values():
            if entry.desired.artifact_digest == cfg.artifact_digest:
                entry.good = entry.desired
        self._unload_unreferenced()
        self.update_gauges()

    def _unload_unreferenced(self) -> None:
        refs = referenced_digests(self.entries)
        for digest in self.cache.digests():
            if digest not in refs:
                self.cache.discard(digest)
        for digest in [d for d in self.failed if d not in refs]:
            del self.failed[digest]
        self.update_gauges()

    def _evicted(self, model: LoadedModel) -> None:
        self.metrics.evictions.inc()
        log.info("evicted %s version %s (LRU, memory budget)", model.name, model.version)

    def update_gauges(self) -> None:
        """Set the loaded-models and memory gauges from the cache."""
        self.metrics.loaded.set(len(self.cache))
        self.metrics.memory.set(self.cache.used)
        self._update_drift()

    def _update_drift(self) -> None:
        """Export the monitoring pass's scores (`.mw/monitor/<env>.json`) when the file changed."""
        from modelworks.monitor.run import read_scores, scores_path

        path = scores_path(self.ws, self.env)
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return
        if mtime != getattr(self, "_drift_mtime", None):
            self._drift_mtime = mtime
            self.metrics.set_drift(read_scores(path))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _background_load(self, cfg: DeployConfig) -> None:
        with contextlib.suppress(ModelworksError):  # recorded in self.failed, logged by _load
            await self.ensure(cfg)

    # -- request path ------------------------------------------------------------------------

    def entry(self, key: ModelKey, tenants: frozenset[str] | None = None) -> ModelEntry:
        """The deployed model `key` names, or a 404 with a suggestion.

        With `tenants` (the caller's visible tenants; None: all), a model of another tenant is
        answered exactly as a model that does not exist: same status, same message.
        """
        visible = tenants is None or key[0] in tenants
        entry = self.entries.get(key) if visible else None
        if entry is None:
            label = qualified(*key)
            hint = did_you_mean(label, self._suggestions(key[0], tenants)) if visible else ""
            raise NotFoundError(f"model '{label}' is not deployed in {self.env}.{hint}")
        return entry

    def _suggestions(self, tenant: str, tenants: frozenset[str] | None) -> set[str]:
        """Names to suggest for a miss in `tenant`: that tenant's models (any visible ones for
        the default tenant, whose bare base path is where a mistyped name lands)."""
        return {
            e.label
            for k, e in self.entries.items()
            if (k[0] == tenant or tenant == DEFAULT_TENANT) and (tenants is None or k[0] in tenants)
        }

    def visible(self, tenants: frozenset[str] | None) -> list[ModelEntry]:
        """The entries of the `tenants` (None: all), sorted by qualified name."""
        found = [e for k, e in self.entries.items() if tenants is None or k[0] in tenants]
        return sorted(found, key=lambda e: e.label)

    async def resolve(self, key: ModelKey, version: str | None = None) -> LoadedModel:
        """The model that should answer a request for `key` (and `version`) right now."""
        entry = self.entry(key)
        want = entry.desired
        model = self.cache.get(want.artifact_digest)
        if model is not None and (version is None or version == want.version):
            return model
        if version is not None and version != want.version:
            return await self._pinned(entry, version)
        good = entry.good
        if want.artifact_digest in self.failed:
            if good is not None and good.artifact_digest != want.artifact_digest:
                return await self.ensure(good)
            raise self.failed[want.artifact_digest].with_traceback(None)
        if good is not None and good.artifact_digest != want.artifact_digest:
            old = self.cache.get(good.artifact_digest)
            if old is not None:  # keep answering with the old version while the new one loads
                if want.artifact_digest not in self._loading:
                    self._spawn(self._background_load(want))
                return old
        try:
            return await self.ensure(want)
        except ModelworksError:
            if good is None or good.artifact_digest == want.artifact_digest:
                raise
            return await self.ensure(good)

    async def _pinned(self, entry: ModelEntry, version: str) -> LoadedModel:
        if entry.good is not None and entry.good.version == version:
            return await self.ensure(entry.good)
        serving = sorted({entry.desired.version} | ({entry.good.version} if entry.good else set()))
        raise NotFoundError(
            f"model '{entry.label}' has no version '{version}' in {self.env}; "
            f"versions served: {', '.join(serving)}"
        )

    async def status(self, key: ModelKey, name: str) -> dict[str, Any]:
        """Readiness of one model (answered as `name`), loading it if needed; includes a
        refused version's error."""
        entry = self.entry(key)
        out: dict[str, Any] = {"name": name, "desired_version": entry.desired.version}
        try:
            model = await self.resolve(key)
        except ModelworksError as exc:
            return {**out, "ready": False, "error": str(exc)}
        out.update(ready=True, version=model.version)
        failure = self.failed.get(entry.desired.artifact_digest)
        if failure is not None:
            out["error"] = str(failure)
        return out

    async def metadata(
        self, key: ModelKey, name: str, version: str | None = None
    ) -> dict[str, Any]:
        """Model metadata (protocol shape, answered as `name`) without necessarily loading it."""
        entry = self.entry(key)
        cfg = entry.desired
        if version is not None and version != cfg.version:
            if entry.good is None or entry.good.version != version:
                await self._pinned(entry, version)
            cfg = entry.good or cfg
        meta = self._meta.get(cfg.artifact_digest)
        if meta is None:
            try:
                meta = await asyncio.to_thread(self.loader.metadata, cfg)
            except ModelworksError as exc:
                raise ModelUnavailableError(f"{name} version {cfg.version}: {exc}") from None
            self._meta[cfg.artifact_digest] = meta
        versions = [cfg.version]
        if entry.good is not None and entry.good.version not in versions:
            versions.append(entry.good.version)
        return {
            "name": name,
            "versions": versions,
            "platform": PLATFORMS.get(cfg.runtime, cfg.runtime),
            "inputs": list(meta.get("inputs", [])),
            "outputs": list(meta.get("outputs", [])),
        }

    def ready(self) -> tuple[bool, list[str]]:
        """Server readiness: every deployed model has a loadable (or fallback) version."""
        broken = [
            e.label
            for e in self.entries.values()
            if e.desired.artifact_digest in self.failed and e.good is None
        ]
        return not broken, broken

    async def close(self) -> None:
        """Cancel background loads."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
