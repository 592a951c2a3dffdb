"""The tenancy rules every path applies: who sees which tenant, qualified names, settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelworks.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    SettingsError,
)
from modelworks.registry.store import Store
from modelworks.registry.tenants import approvals_required, save_tenant, settings_of, tenants
from modelworks.security.identity import Identity
from modelworks.tenancy.access import (
    can_see,
    filter_visible,
    is_platform_admin,
    require_in_tenant,
    visible_tenants,
)
from modelworks.tenancy.config import parse_bytes
from modelworks.tenancy.names import qualified, split_ref
from modelworks.testing import make_workspace
from modelworks.workspace import Workspace

ACME_APPROVER = Identity("ann", "approver", "acme", True, "token")
ACME_VIEWER = Identity("vic", "viewer", "acme", True, "token")
PLATFORM = Identity("root", "admin", "default", True, "token")
DEFAULT_DEV = Identity("dev", "developer", "default", True, "token")
LOCAL = Identity("me", "admin", "default", False, "local")


def test_only_platform_admins_and_the_local_user_see_every_tenant() -> None:
    assert is_platform_admin(PLATFORM)
    assert is_platform_admin(LOCAL)
    assert not is_platform_admin(DEFAULT_DEV)
    assert not is_platform_admin(Identity("a", "admin", "acme", True, "token"))
    assert visible_tenants(PLATFORM) is None
    assert visible_tenants(ACME_VIEWER) == frozenset({"acme"})
    assert visible_tenants(DEFAULT_DEV) == frozenset({"default"})
    assert can_see(ACME_VIEWER, "acme")
    assert not can_see(ACME_VIEWER, "globex")


def test_filter_visible_keeps_own_tenant_rows_and_treats_missing_as_default() -> None:
    rows = [{"n": 1, "tenant": "acme"}, {"n": 2, "tenant": "globex"}, {"n": 3, "tenant": None}]
    assert [r["n"] for r in filter_visible(ACME_VIEWER, rows, "tenant")] == [1]
    assert [r["n"] for r in filter_visible(DEFAULT_DEV, rows, "tenant")] == [3]
    assert len(filter_visible(PLATFORM, rows, "tenant")) == 3


def test_another_tenants_object_is_not_found_and_a_low_role_is_forbidden() -> None:
    with pytest.raises(NotFoundError, match="promotion 7 not found"):
        require_in_tenant(ACME_APPROVER, "globex", "approver", "approve", "promotion 7")
    with pytest.raises(PermissionDeniedError, match="approver"):
        require_in_tenant(ACME_VIEWER, "acme", "approver", "approve", "promotion 7")
    require_in_tenant(ACME_APPROVER, "acme", "approver", "approve", "promotion 7")


def test_qualified_names_round_trip_and_bad_parts_are_named() -> None:
    assert qualified("default", "churn") == "churn"
    assert qualified("acme", "churn") == "acme/churn"
    assert split_ref("acme/churn") == ("acme", "churn")
    assert split_ref("churn") == (None, "churn")
    with pytest.raises(ConfigError, match="tenant 'a/b'"):
        split_ref("a/b/c")
    with pytest.raises(ConfigError, match="'Churn!'"):
        split_ref("acme/Churn!")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1024", 1024), (2048, 2048), ("10GiB", 10 * 2**30), ("500MB", 500 * 10**6), ("1.5KiB", 1536)],
)
def test_sizes_parse_in_both_unit_systems(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["lots", "-1", "10XB", True])
def test_a_bad_size_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_bytes(bad)


def _declare(ws: Workspace, tenants_block: dict[str, object]) -> Workspace:
    path = ws.root / "modelworks.yaml"
    raw = yaml.safe_load(path.read_text()) or {}
    raw["tenants"] = tenants_block
    path.write_text(yaml.safe_dump(raw))
    return Workspace.load(ws.root)


def test_a_typo_in_a_tenant_names_the_field(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    with pytest.raises(SettingsError, match=r"tenants\.acme\.wieght"):
        _declare(ws, {"acme": {"wieght": 2}})
    with pytest.raises(SettingsError, match="tenant name 'Acme Corp'"):
        _declare(ws, {"Acme Corp": {}})


def test_tenant_approvals_tighten_but_never_loosen(tmp_path: Path) -> None:
    ws = _declare(make_workspace(tmp_path / "ws"), {"acme": {"approvals": {"prod": 3, "test": 0}}})
    base_prod = ws.settings.environments["prod"].approvals
    assert approvals_required(ws, "acme", "prod") == max(3, base_prod)
    assert approvals_required(ws, "acme", "test") == ws.settings.environments["test"].approvals
    assert approvals_required(ws, "default", "prod") == base_prod


def test_api_created_tenants_join_declared_ones_and_cannot_override_them(tmp_path: Path) -> None:
    ws = _declare(make_workspace(tmp_path / "ws"), {"acme": {"weight": 2}})
    store = Store(ws.registry_url)
    try:
        save_tenant(ws, store, "globex", {"weight": 3, "quotas": {"max_models": 5}})
        found = tenants(ws, store)
        assert list(found) == ["acme", "globex"]
        assert found["globex"].weight == 3
        assert found["globex"].quotas.max_models == 5
        with pytest.raises(ConflictError, match=r"declared in modelworks\.yaml"):
            save_tenant(ws, store, "acme", {"weight": 9})
        with pytest.raises(ConfigError, match="weight"):
            save_tenant(ws, store, "globex", {"weight": -1})
        assert tenants(ws, store)["globex"].weight == 3  # the refused update changed nothing
        assert settings_of(ws, "acme", store).weight == 2
        with pytest.raises(NotFoundError, match="initech"):
            settings_of(ws, "initech", store)
    finally:
        store.close()
