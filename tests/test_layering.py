"""The import layering in pyproject.toml holds, and the two old import cycles stay broken."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp

import modelworks

SRC = Path(modelworks.__file__).resolve().parents[1]
ROOT = SRC.parent


def test_lint_imports_keeps_every_contract() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout
    assert "Layers" in done.stdout


def test_the_two_old_import_cycles_stay_broken() -> None:
    graph = grimp.build_graph("modelworks", exclude_type_checking_imports=True)
    pairs = [
        ("modelworks.registry.queries", "modelworks.artifacts.verify"),
        ("modelworks.demo", "modelworks.cli.core"),
    ]
    for a, b in pairs:
        both = graph.direct_import_exists(importer=a, imported=b) and graph.direct_import_exists(
            importer=b, imported=a
        )
        assert not both, f"{a} and {b} import each other"
    assert not graph.chain_exists(importer="modelworks.demo", imported="modelworks.cli")
    assert not graph.chain_exists(
        importer="modelworks.registry", imported="modelworks.artifacts.verify"
    )
