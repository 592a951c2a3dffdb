"""Prometheus metrics of one server (a registry per app, so tests and apps never share counters)."""

from __future__ import annotations

import re
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TENANT_LABEL = re.compile(rb'[{,]tenant="((?:[^"\\]|\\.)*)"')


def split_qualified(name: str) -> tuple[str, str]:
    """`acme/churn` -> ("acme", "churn"); `churn` -> ("default", "churn")."""
    tenant, sep, bare = name.rpartition("/")
    return (tenant, bare) if sep and tenant else ("default", name)


def refused_counter(registry: CollectorRegistry) -> Counter:
    """Requests refused at the edge, by reason: `signature` (webhook HMAC), `unauthenticated`
    (401), `forbidden` (403), `too_large` (413). Counted, not audited one row each."""
    return Counter(
        "mw_http_refused_requests",
        "HTTP requests refused before reaching an endpoint, by reason.",
        ["reason"],
        registry=registry,
    )


class ServingMetrics:
    """Request counts, errors and latency per model; loaded models; load times."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "mw_serving_requests", "Inference requests by model.", ["model", "tenant"], registry=r
        )
        self.errors = Counter(
            "mw_serving_request_errors",
            "Failed inference requests by model and HTTP status.",
            ["model", "tenant", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "mw_serving_request_duration_seconds",
            "Inference request latency by model.",
            ["model", "tenant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.loaded = Gauge("mw_serving_loaded_models", "Models loaded in memory.", registry=r)
        self.memory = Gauge(
            "mw_serving_loaded_bytes", "Estimated memory of loaded models.", registry=r
        )
        self.load_time = Histogram(
            "mw_serving_model_load_seconds",
            "Time to extract, verify and load a model.",
            ["runtime"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.load_failures = Counter(
            "mw_serving_model_load_failures",
            "Model versions refused at load.",
            ["model", "tenant"],
            registry=r,
        )
        self.evictions = Counter(
            "mw_serving_evictions", "Models evicted from memory by the LRU.", registry=r
        )
        self.drift_score = Gauge(
            "mw_drift_score",
            "Latest drift score (max PSI over features) by model, from `mw monitor`.",
            ["model", "tenant", "version"],
            registry=r,
        )
        self.drift_detected = Gauge(
            "mw_drift_detected",
            "1 when the latest drift report says the model drifted.",
            ["model", "tenant", "version"],
            registry=r,
        )
        self.unapproved = Gauge(
            "mw_serving_unapproved_configs",
            "1 for each model of a gated environment whose config in Git is not approved "
            "(no valid approval attestation); the last approved version is served instead.",
            ["env", "model", "tenant"],
            registry=r,
        )
        self.refused = refused_counter(r)
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def observe(self, key: tuple[str, str], seconds: float) -> None:
        """Count one successful request of model `key` (tenant, name) and record its latency."""
        pair = self._children.get(key)
        if pair is None:
            labels = (key[1], key[0])
            pair = (self.requests.labels(*labels), self.latency.labels(*labels))
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def error(self, key: tuple[str, str], status: int) -> None:
        """Count one failed request (model and tenant labels are '' for an unknown model)."""
        self.requests.labels(key[1], key[0]).inc()
        self.errors.labels(key[1], key[0], str(status)).inc()

    def set_drift(self, scores: dict[str, dict[str, Any]]) -> None:
        """Replace the drift gauges with the monitoring pass's latest scores per model."""
        self.drift_score.clear()
        self.drift_detected.clear()
        for model, row in scores.items():
            tenant, name = split_qualified(model)
            labels = (name, str(row.get("tenant") or tenant), str(row.get("version", "")))
            self.drift_score.labels(*labels).set(float(row.get("score", 0.0)))
            self.drift_detected.labels(*labels).set(1.0 if row.get("drifted") else 0.0)

    def set_unapproved(self, env: str, models: list[str]) -> None:
        """Replace the unapproved-config gauges with the models refused at the last read."""
        self.unapproved.clear()
        for model in models:
            tenant, name = split_qualified(model)
            self.unapproved.labels(env, name, tenant).set(1.0)

    def render(self, tenants: frozenset[str] | None = None) -> bytes:
        """The exposition text of this registry; with `tenants`, other tenants' series are left
        out (a series without a tenant, or with the unknown-model label '', is kept)."""
        text = generate_latest(self.registry)
        if tenants is None:
            return text
        keep = {t.encode() for t in tenants} | {b""}
        return b"".join(
            line
            for line in text.splitlines(keepends=True)
            if (m := _TENANT_LABEL.search(line)) is None or m.group(1) in keep
        )
