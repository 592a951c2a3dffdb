"""The one name pattern: models, pipelines, environments, tenants and users all match it.

A name is what ends up in a file path, a git ref, an OCI repository and a URL, so it is
lower-case ASCII, starts and ends with a letter or digit, and has no path separators.
"""

from __future__ import annotations

import re
import unicodedata

from modelworks.errors import ConfigError

NAME_PATTERN = r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$"
NAME_MAX = 128
_NAME = re.compile(NAME_PATTERN)


def is_name(value: object) -> bool:
    """True when `value` is a string that matches the name pattern."""
    return isinstance(value, str) and len(value) <= NAME_MAX and bool(_NAME.match(value))


def check_name(kind: str, value: object, where: str = "") -> str:
    """Return `value` when it is a valid name, else raise ConfigError naming what and where."""
    if is_name(value):
        return str(value)
    prefix = f"{where}: " if where else ""
    raise ConfigError(
        f"{prefix}{kind} name {value!r} is not valid: use lower-case letters, digits and "
        f"'.', '_' or '-' between them (at most {NAME_MAX} characters, no '/' or '..')"
    )


def normalize(value: str) -> str:
    """NFKC, trimmed, case-folded: the canonical spelling of a user-given name."""
    return unicodedata.normalize("NFKC", value).strip().casefold()
