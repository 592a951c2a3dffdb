"""Gates: metric thresholds and no-regression against the version an environment serves."""

from __future__ import annotations

from typing import Any

from modelworks.spec import Gates

# Metrics where lower is better; any other metric is taken as higher-is-better.
LOWER_IS_BETTER = {"rmse", "mse", "mae", "mape", "log_loss", "logloss", "loss", "error"}


def lower_is_better(metric: str, gates: Gates) -> bool:
    return metric in gates.max or metric.lower() in LOWER_IS_BETTER


def check(gates: Gates, metrics: dict[str, float], baseline: dict[str, float] | None) -> list[str]:
    """Every gate the metrics miss, as a sentence; an empty list means the version passes."""
    failures: list[str] = []
    for name, bound in gates.min.items():
        if name not in metrics:
            failures.append(
                f"metric {name!r} is gated (min {bound}) but evaluate() did not report it"
            )
        elif metrics[name] < bound:
            failures.append(f"{name} {metrics[name]:.4g} < min {bound:g}")
    for name, bound in gates.max.items():
        if name not in metrics:
            failures.append(
                f"metric {name!r} is gated (max {bound}) but evaluate() did not report it"
            )
        elif metrics[name] > bound:
            failures.append(f"{name} {metrics[name]:.4g} > max {bound:g}")
    if gates.no_regression and baseline:
        names = gates.no_regression if isinstance(gates.no_regression, list) else sorted(metrics)
        for name in names:
            if name not in metrics or name not in baseline:
                continue
            new, old = metrics[name], baseline[name]
            worse = (
                new > old + gates.tolerance
                if lower_is_better(name, gates)
                else new < old - gates.tolerance
            )
            if worse:
                failures.append(f"{name} regressed: {new:.4g} vs {old:.4g} deployed in test")
    return failures


def summary(failures: list[str], baseline: dict[str, Any] | None) -> dict[str, Any]:
    return {"passed": not failures, "failures": failures, "baseline": baseline}
