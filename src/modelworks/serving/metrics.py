"""Prometheus metrics of one server (a registry per app, so tests and apps never share counters)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


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
            "mw_serving_requests", "Inference requests by model.", ["model"], registry=r
        )
        self.errors = Counter(
            "mw_serving_request_errors",
            "Failed inference requests by model and HTTP status.",
            ["model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "mw_serving_request_duration_seconds",
            "Inference request latency by model.",
            ["model"],
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
            ["model"],
            registry=r,
        )
        self.evictions = Counter(
            "mw_serving_evictions", "Models evicted from memory by the LRU.", registry=r
        )
        self.drift_score = Gauge(
            "mw_drift_score",
            "Latest drift score (max PSI over features) by model, from `mw monitor`.",
            ["model", "version"],
            registry=r,
        )
        self.drift_detected = Gauge(
            "mw_drift_detected",
            "1 when the latest drift report says the model drifted.",
            ["model", "version"],
            registry=r,
        )
        self.unapproved = Gauge(
            "mw_serving_unapproved_configs",
            "1 for each model of a gated environment whose config in Git is not approved "
            "(no valid approval attestation); the last approved version is served instead.",
            ["env", "model"],
            registry=r,
        )
        self.refused = refused_counter(r)
        self._children: dict[str, tuple[Any, Any]] = {}

    def observe(self, model: str, seconds: float) -> None:
        """Count one successful request of `model` and record its latency."""
        pair = self._children.get(model)
        if pair is None:
            pair = (self.requests.labels(model), self.latency.labels(model))
            self._children[model] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def error(self, model: str, status: int) -> None:
        """Count one failed request (the model label is '' when the model is unknown)."""
        self.requests.labels(model).inc()
        self.errors.labels(model, str(status)).inc()

    def set_drift(self, scores: dict[str, dict[str, Any]]) -> None:
        """Replace the drift gauges with the monitoring pass's latest scores per model."""
        self.drift_score.clear()
        self.drift_detected.clear()
        for model, row in scores.items():
            labels = (model, str(row.get("version", "")))
            self.drift_score.labels(*labels).set(float(row.get("score", 0.0)))
            self.drift_detected.labels(*labels).set(1.0 if row.get("drifted") else 0.0)

    def set_unapproved(self, env: str, models: list[str]) -> None:
        """Replace the unapproved-config gauges with the models refused at the last read."""
        self.unapproved.clear()
        for model in models:
            self.unapproved.labels(env, model).set(1.0)

    def render(self) -> bytes:
        """The exposition text of this registry."""
        return generate_latest(self.registry)
