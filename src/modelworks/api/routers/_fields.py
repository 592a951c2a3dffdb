"""Bounded field types of the write endpoints' bodies, and the acting user."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import ConfigDict, Field, StringConstraints

from modelworks.names import NAME_MAX, NAME_PATTERN

if TYPE_CHECKING:
    from modelworks.security.identity import Identity

_CORE = NAME_PATTERN.removeprefix("^").removesuffix("$")
# A model: `name`, or `tenant/name` for a tenant's model.
MODEL_REF = rf"^(?:{_CORE}/)?{_CORE}$"
MAX_MODELS = 1000

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=NAME_MAX)]
ModelRef = Annotated[str, StringConstraints(pattern=MODEL_REF, max_length=2 * NAME_MAX + 1)]
ModelRefs = Annotated[list[ModelRef], Field(max_length=MAX_MODELS)]
# Free text kept with a decision: printable, no NUL (PostgreSQL text cannot hold one).
Note = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x08\x0b-\x1f\x7f]*$", max_length=2000)]
Label = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-/]+=[^\x00-\x1f\x7f]*$", max_length=256)
]
STRICT = ConfigDict(extra="forbid")


def acting(identity: Identity) -> str:
    """The user a write acts as; a local (unauthenticated) one is audited as such."""
    from modelworks.registry import audit

    if not identity.authenticated:
        audit.label_actor(identity.user, identity.audit_actor)
    return identity.user
