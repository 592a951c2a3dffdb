"""The controller's durable memory: last reconciled commits, schedule fires, seen drift reports.

It is a small JSON file, `.mw/controller/state.json`, rewritten atomically (a temporary file
renamed into place), so a SIGKILL at any moment leaves either the old or the new state.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelworks.errors import ConfigError

FORMAT = 1


@dataclass
class ControllerState:
    """What the controller has already acted on."""

    repos: dict[str, str] = field(default_factory=dict)
    schedules: dict[str, str] = field(default_factory=dict)
    drift_seen: int = 0
    watch: dict[str, list[int]] = field(default_factory=dict)
    last_tick: str | None = None
    format: int = FORMAT

    @classmethod
    def load(cls, path: Path) -> ControllerState:
        """Read the state file; a missing file is a fresh state."""
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(
                f"{path}: unreadable controller state ({exc}); delete it to start from scratch "
                "(the controller then re-plans the whole workspace, which trains nothing new)"
            ) from None
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)

    def save(self, path: Path) -> None:
        """Write the state atomically."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1, sort_keys=True))
        os.replace(tmp, path)

    def to_dict(self) -> dict[str, Any]:
        """The state without the (large) watched-file table."""
        d = asdict(self)
        d["watch"] = len(self.watch)
        return d
