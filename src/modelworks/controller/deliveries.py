"""Webhook deliveries the controller has acted on, so a replayed delivery triggers nothing.

GitHub signs the body, not the `X-GitHub-Delivery` header, so a captured delivery could be
replayed under a fresh id: each delivery is remembered by its id and by its body's digest, and
either one seen again within `RETENTION` is a replay. Rows older than that are pruned on each
new delivery (GitHub redelivers for at most three days).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from modelworks.errors import ModelworksError
from modelworks.registry.models import WebhookDelivery

if TYPE_CHECKING:
    from modelworks.registry.store import Store

RETENTION = timedelta(days=7)
HEADER = "X-GitHub-Delivery"
_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class DeliveryIdError(ModelworksError):
    """The delivery id header is not a GUID-like token."""


def keys(delivery_id: str | None, body: bytes) -> list[str]:
    """The registry keys of one delivery: its id (when sent) and its body digest."""
    out = [f"sha256:{hashlib.sha256(body).hexdigest()}"]
    if delivery_id is not None:
        if not _ID.fullmatch(delivery_id):
            raise DeliveryIdError(
                f"{HEADER} must be 1-128 letters, digits or ._:- characters, "
                f"got {delivery_id[:40]!r}"
            )
        out.insert(0, f"id:{delivery_id}")
    return out


def remember(store: Store, delivery_id: str | None, body: bytes, event: str) -> bool:
    """Record a delivery; False when it (its id or its body) was seen before: a replay."""
    rows = keys(delivery_id, body)
    now = datetime.now(UTC)
    try:
        with store.session() as s:
            s.execute(delete(WebhookDelivery).where(WebhookDelivery.received_at < now - RETENTION))
            s.add_all(WebhookDelivery(key=k, event=event[:64], received_at=now) for k in rows)
    except IntegrityError:
        return False
    return True
