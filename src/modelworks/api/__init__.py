"""The control-plane REST API (`/api/v1`, FastAPI): a router per resource over the same
functions the CLI calls. `create_app(ws)` builds it; `mw server` and `mw up` serve it."""

from modelworks.api.app import create_app

__all__ = ["create_app"]
