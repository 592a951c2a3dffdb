"""A token-mode workspace with registered models in three tenants and a token per role, for
the API tests (imported by test_api_*.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelworks.api import create_app
from modelworks.registry.store import Store
from modelworks.security.tokens import bootstrap_token, create_token
from modelworks.security.users import add_user
from modelworks.testing import AppClient, make_workspace, register_models

MODELS = [("acme", "churn"), ("acme", "fraud"), ("acme", "ltv"), ("globex", "churn")]
MODELS += [("default", f"m{i:02d}") for i in range(5)]


class Api:
    """A token-mode workspace with models in three tenants, and a token per role."""

    def __init__(self, root: Path, registry_url: str) -> None:
        self.ws = make_workspace(
            root,
            auth={"mode": "token"},
            registry={"url": registry_url},
            tenants={"acme": {}, "globex": {}},
        )
        self.store = Store(registry_url)
        register_models(self.store, MODELS)
        self.tokens = {"root": bootstrap_token(self.store, user="root", actor="test")["token"]}
        for user, role, tenant in [
            ("ann", "admin", "acme"),
            ("vic", "viewer", "acme"),
            ("gus", "viewer", "globex"),
        ]:
            add_user(self.store, user, actor="root")
            made = create_token(self.store, user=user, role=role, tenant=tenant, actor="root")
            self.tokens[user] = made["token"]
        self.client = AppClient(create_app(self.ws))

    def get(self, who: str | None, url: str, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return self.client.get(url, headers=headers, **kw)

    def call(self, method: str, who: str, url: str, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[who]}", **kw.pop("headers", {})}
        return self.client.request(method, url, headers=headers, **kw)
