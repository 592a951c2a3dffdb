"""The continuous loop: watch Git, data folders, schedules, drift; apply, reconcile serving."""

from __future__ import annotations

from modelworks.controller.loop import Controller, TickReport

__all__ = ["Controller", "TickReport"]
