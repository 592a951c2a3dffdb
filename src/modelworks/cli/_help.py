"""Help rendering fixes: flags take no value, so their help shows no `<bool>` type."""

from __future__ import annotations

from typing import Any

_patched = False


def hide_flag_types() -> None:
    """Render on/off flags (`--json`, `--help`) without a type, as click does."""
    global _patched
    if _patched:
        return
    from typer import core

    option = getattr(core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if option is None or shown is None:  # an older typer: it never showed flag types
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None
        result: str | None = shown(self, ctx)
        return result

    option.display_type_rich = display_type_rich
    _patched = True
