"""Rough edges a new user hits: --version, help rendering, demo output, git identity, tables."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from modelworks.testing import run_cli


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0
    assert out.strip() == f"mw (modelworks) {version('modelworks')}"


@pytest.mark.parametrize("command", ["apply", "plan", "status"])
def test_help_shows_no_bool_type_after_flags(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0
    assert "--json" in out
    assert "<bool>" not in out
    assert "<path>" in out  # options that take a value still show their type
