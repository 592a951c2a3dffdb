"""Errors and exit codes through the real CLI: clear one-line errors, the right code, no retries."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from modelworks.testing import run_cli

if TYPE_CHECKING:
    from modelworks.workspace import Workspace


def _one_clean_line(err: str) -> str:
    """The stderr of a failed command: one error line, no traceback, not a 'bug'."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert "unexpected error" not in err
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_unknown_model_name_is_an_error_with_did_you_mean(
    fleet: Workspace, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code, out, err = run_cli(capsys, command, "model-1x", "-C", str(fleet.root))
    assert code == 1
    line = _one_clean_line(err)
    assert "model-1x" in line
    assert "Did you mean 'model-1'?" in line
    assert "Plan:" not in out
