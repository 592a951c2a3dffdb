"""Rough edges a new user hits: --version, help rendering, demo output, git identity, tables."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from rich.text import Text

from modelworks import _git
from modelworks._render import plan_line
from modelworks.data.add import add
from modelworks.registry.queries import status
from modelworks.security.anchor import open_store
from modelworks.testing import run_cli, write_dataset, write_pipeline, write_spec
from modelworks.workspace import Workspace


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


def _git_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A global git config naming Ada, as a new user's machine has it."""
    cfg = tmp_path / "gitconfig"
    cfg.write_text("[user]\n\tname = Ada Lovelace\n\temail = ada@example.org\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(cfg))


def test_commits_carry_git_s_configured_user_email(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    fleet: Workspace,
) -> None:
    _git_identity(tmp_path, monkeypatch)
    write_dataset(fleet, "data/set0/data.csv", seed=11)
    code, _, err = run_cli(
        capsys, "data", "add", str(fleet.root / "data/set0/data.csv"), "-C", str(fleet.root)
    )
    assert code == 0, err
    assert _git.git(fleet.root, "log", "-1", "--format=%an <%ae>|%ce").strip() == (
        "ada lovelace <ada@example.org>|ada@example.org"
    )
    code, _, err = run_cli(capsys, "apply", "-C", str(fleet.root))
    assert code == 0, err
    deploy = _git.git(fleet.deploy_repo, "log", "-1", "--format=%ae|%s").strip()
    assert deploy.startswith("ada@example.org|"), deploy


def test_another_actor_never_borrows_git_s_email(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    fleet: Workspace,
) -> None:
    _git_identity(tmp_path, monkeypatch)
    write_dataset(fleet, "data/set1/data.csv", seed=12)
    code, _, err = run_cli(
        capsys,
        "data",
        "add",
        str(fleet.root / "data/set1/data.csv"),
        "--as",
        "bob",
        "-C",
        str(fleet.root),
    )
    assert code == 0, err
    assert _git.git(fleet.root, "log", "-1", "--format=%an <%ae>").strip() == (
        "bob <bob@modelworks.local>"
    )


def test_plan_line_reads_like_mw_plan() -> None:
    line = plan_line({"create": 62, "update": 0, "unchanged": 3, "error": 1})
    text = Text.from_markup(line).plain
    assert text == "62 to create, 0 to update, 3 unchanged, 1 error(s)"


@pytest.mark.slow
def test_demo_prints_its_plan_as_a_sentence_not_a_dict(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run_cli(capsys, "demo", str(tmp_path / "demo"), "-j", "2")
    assert code == 0, err
    step = next(line for line in out.splitlines() if line.startswith("2. Plan"))
    assert step == "2. Plan: 62 to create, 0 to update, 0 unchanged, 0 error(s)"
    assert "{" not in out.split("Explore:")[0]


LONG_NAMES = ["cancer-gradient-boosting-v2-01", "cancer-gradient-boosting-v2-02"]


def test_status_at_80_columns_shows_full_names_and_versions(
    capsys: pytest.CaptureFixture[str], workspace: Workspace
) -> None:
    write_pipeline(workspace)
    write_dataset(workspace, "data/cancer/data.csv")
    add(workspace, workspace.root / "data/cancer/data.csv")
    for name in LONG_NAMES:
        write_spec(workspace, name, "data/cancer/data.csv")
    code, _, err = run_cli(capsys, "apply", "-C", str(workspace.root))
    assert code == 0, err
    versions = [r["version"] for r in status(open_store(workspace))]
    done = subprocess.run(
        [sys.executable, "-m", "modelworks", "status", "-C", str(workspace.root)],
        env={**os.environ, "COLUMNS": "80"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert max(len(line) for line in done.stdout.splitlines()) <= 80
    assert "…" not in done.stdout
    for name in [*LONG_NAMES, *versions]:
        assert name in done.stdout
