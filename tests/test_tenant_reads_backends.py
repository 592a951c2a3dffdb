"""The read paths' `tenants` filter on each registry backend (SQLite and PostgreSQL): two
tenants with a same-named model, their runs, promotion requests and audit events."""

from __future__ import annotations

import pytest

from modelworks.errors import NotFoundError
from modelworks.gitops.records import get_promotion, list_promotions
from modelworks.registry import audit
from modelworks.registry.models import Model, PromotionRequest, Run
from modelworks.registry.queries import run_log, runs, show, status
from modelworks.registry.store import Store

ACME, GLOBEX = frozenset({"acme"}), frozenset({"globex"})


@pytest.fixture
def store(registry_url: str) -> Store:
    store = Store(registry_url)
    with store.session() as s:
        for tenant in ("acme", "globex"):
            m = Model(name="churn", tenant=tenant, pipeline=f"{tenant}-pipe", labels={})
            s.add(m)
            s.flush()
            s.add(Run(model_id=m.id, tenant=tenant, fingerprint="f" * 64, version=tenant[:4]))
            s.add(
                PromotionRequest(env="prod", branch=f"promote/{tenant}", author="x", tenant=tenant)
            )
    audit.record(
        store,
        [
            audit.event("promotion.opened", f"promotion/{i}", actor="x", tenant=t)
            for i, t in ((1, "acme"), (2, "globex"))
        ],
    )
    return store


def test_models_and_runs_of_visible_tenants_only(store: Store) -> None:
    assert [(r["tenant"], r["pipeline"]) for r in status(store, ACME)] == [("acme", "acme-pipe")]
    assert len(status(store)) == 2
    assert show(store, "churn", GLOBEX)["pipeline"] == "globex-pipe"
    assert show(store, "acme/churn")["pipeline"] == "acme-pipe"
    assert [r["version"] for r in runs(store, tenants=GLOBEX)] == ["glob"]
    assert [r["version"] for r in runs(store, model="churn", tenants=ACME)] == ["acme"]
    assert run_log(store, "churn", None, ACME)[0]["version"] == "acme"


@pytest.mark.parametrize("call", ["show", "runs", "log"])
def test_another_tenants_model_is_missing(store: Store, call: str) -> None:
    def read(ref: str) -> object:
        if call == "show":
            return show(store, ref, ACME)
        if call == "runs":
            return runs(store, model=ref, tenants=ACME)
        return run_log(store, ref, None, ACME)

    with pytest.raises(NotFoundError) as hidden:
        read("globex/churn")
    with pytest.raises(NotFoundError) as missing:
        read("initech/churn")
    assert str(hidden.value) == str(missing.value).replace("initech", "globex")
    assert "globex" not in str(missing.value)


def test_promotions_and_audit_of_visible_tenants_only(store: Store) -> None:
    assert [r["tenant"] for r in list_promotions(store, tenants=GLOBEX)] == ["globex"]
    assert [r["tenant"] for r in list_promotions(store)] == ["globex", "acme"]
    acme_id = list_promotions(store, tenants=ACME)[0]["id"]
    assert get_promotion(store, acme_id, ACME)["tenant"] == "acme"
    with pytest.raises(NotFoundError, match=f"^no promotion request {acme_id};"):
        get_promotion(store, acme_id, GLOBEX)
    assert [e["target"] for e in audit.rows(store, tenants=ACME)] == ["promotion/1"]
    assert len(audit.rows(store)) == 2
