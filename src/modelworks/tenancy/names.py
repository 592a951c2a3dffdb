"""Qualified model names: `tenant/model`, with the default tenant's models also bare.

`acme/churn` and `globex/churn` are two models. The default tenant's `churn` is written
`churn` (and `default/churn` is accepted), so repositories without tenants keep working.
"""

from __future__ import annotations

from collections.abc import Iterable

from modelworks.errors import ConfigError, ConflictError, NotFoundError, did_you_mean
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


def model_key(ref: str) -> tuple[str, str]:
    """`acme/churn` -> ("acme", "churn"); `churn` -> ("default", "churn")."""
    tenant, name = split_ref(ref)
    return tenant or DEFAULT_TENANT, name


def resolve_ref(ref: str, known: Iterable[tuple[str, str]], where: str = "the registry") -> str:
    """The qualified name `ref` means among `known` (tenant, name) pairs.

    `acme/churn` means exactly that model. A bare `churn` means the default tenant's churn,
    or, when the default tenant has none and exactly one tenant has one, that one. Otherwise
    NotFoundError (with a suggestion) or, for a bare name several tenants share,
    ConflictError listing the qualified candidates.
    """
    tenant, name = split_ref(ref)
    pairs = {(t or DEFAULT_TENANT, n) for t, n in known}
    if tenant is not None:
        if (tenant, name) in pairs:
            return qualified(tenant, name)
        hint = did_you_mean(ref, [qualified(t, n) for t, n in pairs])
        raise NotFoundError(f"no model {ref!r} in {where}.{hint}")
    if (DEFAULT_TENANT, name) in pairs:
        return name
    owners = sorted(t for t, n in pairs if n == name)
    if len(owners) == 1:
        return qualified(owners[0], name)
    if owners:
        shown = ", ".join(qualified(t, name) for t in owners)
        raise ConflictError(f"model name {name!r} is ambiguous in {where}: use one of {shown}")
    hint = did_you_mean(name, [qualified(t, n) for t, n in pairs])
    raise NotFoundError(f"no model named {name!r} in {where}.{hint}")


def oci_repository(tenant: str | None, name: str, namespace: str | None = None) -> str:
    """The OCI repository of a model: `name` for the default tenant (as before tenants),
    else `<namespace>/<name>`, the namespace being the tenant's (default: its name)."""
    tenant = tenant or DEFAULT_TENANT
    return name if tenant == DEFAULT_TENANT else f"{namespace or tenant}/{name}"
