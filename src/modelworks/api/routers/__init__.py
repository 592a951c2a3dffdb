"""One router per resource; `modelworks.api.app.ROUTERS` lists them."""
