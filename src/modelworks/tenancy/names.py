"""Qualified model names: `tenant/model`, with the default tenant's models also bare.

`acme/churn` and `globex/churn` are two models. The default tenant's `churn` is written
`churn` (and `default/churn` is accepted), so repositories without tenants keep working.
"""

from __future__ import annotations

from modelworks.errors import ConfigError
from modelworks.names import is_name
from modelworks.tenancy.access import DEFAULT_TENANT


def qualified(tenant: str | None, name: str) -> str:
    """The display and lookup name: bare for the default tenant, else `tenant/name`."""
    tenant = tenant or DEFAULT_TENANT
    return name if tenant == DEFAULT_TENANT else f"{tenant}/{name}"


def split_ref(ref: str) -> tuple[str | None, str]:
    """`acme/churn` -> ("acme", "churn"); `churn` -> (None, "churn"): the tenant is unstated.

    A ConfigError names the reference when either part is not a valid name.
    """
    tenant, sep, name = ref.strip().rpartition("/")
    if sep and not is_name(tenant):
        raise ConfigError(
            f"model {ref!r}: tenant {tenant!r} is not a valid name (use TENANT/MODEL)"
        )
    if not is_name(name):
        raise ConfigError(f"model {ref!r}: {name!r} is not a valid model name (use TENANT/MODEL)")
    return (tenant if sep else None), name
