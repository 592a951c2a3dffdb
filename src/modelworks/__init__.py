"""modelworks: a GitOps model factory."""

from __future__ import annotations

__version__ = "0.1.0"

# Bumped whenever the line changes in a way that changes what a training run produces;
# it is part of every fingerprint, so a bump retrains the fleet.
LINE_FORMAT = "mw-line-1"
