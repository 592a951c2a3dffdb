"""Response models of the read endpoints, so /openapi.json says what each one returns.

Rows are the dicts the CLI prints with `--json`; the models name their fields and let nested
free-form parts (metrics, lineage, reports) stay objects.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from modelworks.names import NAME_PATTERN

NAME = {"pattern": NAME_PATTERN, "min_length": 1, "max_length": 128}
# Free text (a name search, an actor): printable, so nothing reaches SQL that PostgreSQL
# refuses (a NUL byte) or that a log line would mangle.
TEXT = {"pattern": r"^[^\x00-\x1f\x7f]+$", "min_length": 1, "max_length": 128}


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class LastRun(_Open):
    id: int
    status: str
    error: str | None


class ModelRow(_Open):
    """One `mw status --json` row."""

    name: str
    tenant: str
    pipeline: str | None
    version: str | None
    status: str | None
    metrics: dict[str, Any]
    deployed: dict[str, str]
    last_run: LastRun | None


class ModelPage(BaseModel):
    items: list[ModelRow]
    next_cursor: str | None


class VersionInfo(_Open):
    version: str
    fingerprint: str
    status: str
    reason: str | None
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    signed: bool | None
    created_at: str | None
    artifact: dict[str, Any]


class ModelInfo(_Open):
    """What `mw show --json` prints."""

    name: str
    tenant: str
    pipeline: str | None
    spec_path: str | None
    labels: dict[str, Any]
    artifact: dict[str, Any] | None
    sbom: dict[str, Any] | None
    latest: VersionInfo | None
    versions: list[VersionInfo]
    deployments: dict[str, dict[str, Any]]


class RunRow(_Open):
    id: int
    model: str
    version: str | None
    status: str
    trigger: str | None
    attempts: int
    error: str | None
    duration: float | None
    created_at: str | None


class RunPage(BaseModel):
    runs: list[RunRow]
    next_cursor: str | None


class RunLog(BaseModel):
    run: RunRow
    log: str
    truncated: bool


class DriftRow(_Open):
    id: int
    model: str
    tenant: str
    env: str
    version: str
    score: float
    drifted: bool
    samples: int
    action: str | None
    report: dict[str, Any]
    created_at: str | None


class DriftList(BaseModel):
    reports: list[DriftRow]


class AuditEventRow(_Open):
    seq: int
    actor: str
    action: str
    target: str
    tenant: str | None


class AuditList(BaseModel):
    events: list[AuditEventRow]


class TokenRow(_Open):
    id: int
    name: str
    user: str
    role: str
    tenant: str
    state: str
    created_at: str | None
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None


class TokenList(BaseModel):
    tokens: list[TokenRow]


class CreatedToken(TokenRow):
    token: str


class TenantInfo(_Open):
    """`mw tenant list --json`'s row (`mw tenant show --json` for one), plus declared/settings."""

    name: str
    display_name: str
    weight: float
    quotas: dict[str, Any]
    models: int
    source: str
    declared: bool
    settings: dict[str, Any]


class TenantList(BaseModel):
    tenants: list[TenantInfo]


def narrowed(seen: frozenset[str] | None, tenant: str | None) -> frozenset[str] | None:
    """The visible tenants `seen` (None: all) narrowed to `tenant` when a filter names one."""
    if tenant is None:
        return seen
    return frozenset({tenant}) if seen is None or tenant in seen else frozenset()
