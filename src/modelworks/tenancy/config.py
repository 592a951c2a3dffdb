"""A tenant as declared in `modelworks.yaml` under `tenants:` (or through the API).

tenants:
  acme:
    display_name: ACME Analytics
    data_roots: [data/acme]          # what its specs may read (default: data/<tenant>)
    pipelines: [sklearn-tabular]     # allowed pipelines (default: all)
    oci_namespace: acme              # OCI repositories <namespace>/<model> (default: name)
    environments: [test, prod]       # environments it may use (default: all)
    approvals: {prod: 2}             # may tighten the workspace's, never loosen
    weight: 2                        # fair share of the workers (default 1)
    quotas:
      max_concurrent_runs: 4
      max_queued_runs: 1000
      max_models: 500
      max_artifact_bytes: 10GiB
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelworks.names import NAME_PATTERN

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_bytes(value: Any) -> int:
    """`10GiB`, `500MB`, `1024` -> bytes; ValueError naming what is accepted otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 10GiB or a number of bytes")
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size: use e.g. 500MB, 10GiB or a number of bytes")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    base = unit[:1]
    factor = 2 ** (10 * "bkmgt".index(base)) if "i" in unit else _UNITS[base]
    return int(number * factor)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Quotas(_Strict):
    max_concurrent_runs: int | None = Field(None, ge=1, description="Runs at once.")
    max_queued_runs: int | None = Field(None, ge=1, description="Runs waiting at once.")
    max_models: int | None = Field(None, ge=0, description="Registered models.")
    max_artifact_bytes: int | None = Field(
        None, ge=0, description="Bytes of all its artifacts (sizes like 10GiB accepted)."
    )

    @field_validator("max_artifact_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return None if value is None else parse_bytes(value)


class TenantSettings(_Strict):
    """One tenant; every field has a default, so `acme: {}` declares a tenant."""

    display_name: str | None = Field(None, max_length=255)
    data_roots: list[str] | None = Field(
        None, description="Folders its specs may read (default: data/<tenant>)."
    )
    pipelines: list[str] | None = Field(None, description="Allowed pipelines (default: all).")
    oci_namespace: str | None = Field(
        None, pattern=NAME_PATTERN, description="OCI namespace (default: the tenant's name)."
    )
    environments: list[str] | None = Field(None, description="Usable environments (default all).")
    approvals: dict[str, int] = Field(
        default_factory=dict, description="Approvals per environment (tighten only)."
    )
    weight: float = Field(1.0, gt=0, le=1000, description="Fair share of the workers.")
    quotas: Quotas = Field(default_factory=Quotas)

    @field_validator("approvals")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        for env, count in value.items():
            if count < 0:
                raise ValueError(f"approvals for {env!r} must be 0 or more (got {count})")
        return value

    def namespace(self, name: str) -> str:
        """The OCI namespace of tenant `name`."""
        return self.oci_namespace or name

    def roots(self, name: str) -> list[str]:
        """The data roots of tenant `name`, relative to the workspace."""
        return list(self.data_roots) if self.data_roots is not None else [f"data/{name}"]

    def allows_pipeline(self, pipeline: str) -> bool:
        return self.pipelines is None or pipeline in self.pipelines

    def allows_env(self, env: str) -> bool:
        return self.environments is None or env in self.environments
