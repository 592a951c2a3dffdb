"""`mw init`: a new workspace with working defaults, optionally with an example fleet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelworks import _git
from modelworks.errors import ConfigError
from modelworks.workspace import CONFIG_FILE, Workspace, load_settings

CONFIG_TEMPLATE = """\
# modelworks workspace. Every setting has a working default; uncomment to change.
# Environment variables override the file: MW_REGISTRY_URL, MW_EXECUTOR, MW_WORKERS,
# MW_RAY_ADDRESS, MW_OCI_REGISTRY, MW_DATA_REMOTE, MW_WEBHOOK_SECRET.
version: 1
name: {name}
paths:
  models: models          # model specs (*.json / *.yaml), tenant sub-folders allowed
  pipelines: pipelines    # pipelines/<name>/version + pipeline.py
  data: data              # data files and their .dvc pointers
  deploy: .               # the deploy repo: '.' is this repository
# registry:
#   url: postgresql+psycopg://user@host/db   # default: SQLite in .mw/registry.db
executor:
  kind: local             # local | ray
  workers: 0              # 0 = one per core
# data:
#   remote: /shared/dvc-remote                 # a DVC remote that is a local folder
# oci:
#   registry: registry.example.com:5000        # push ModelCars after apply
#   namespace: modelworks
environments:
  test:
    auto_deploy: true
    approvals: 0
  prod:
    auto_deploy: false
    approvals: 1
serving:
  sample_rate: 0.1
  max_memory: 1GiB
  # auth: token            # none | token (Bearer); unset: none on loopback, token elsewhere
  # max_body_bytes: 16777216
"""

GITIGNORE = ".mw/\n__pycache__/\n"


def init(root: Path, *, example: bool = False, name: str | None = None) -> Workspace:
    """Create a workspace at `root` (a git repository with modelworks.yaml) and commit it."""
    root = root.resolve()
    if (root / CONFIG_FILE).exists():
        raise ConfigError(f"{root / CONFIG_FILE} already exists: {root} is already a workspace")
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    _git.init(root)
    (root / CONFIG_FILE).write_text(CONFIG_TEMPLATE.format(name=name or root.name))
    for sub in ("models", "pipelines", "data", "deploy"):
        (root / sub).mkdir(exist_ok=True)
        (root / sub / ".gitkeep").touch()
    gi = root / ".gitignore"
    existing = gi.read_text() if gi.exists() else ""
    if ".mw/" not in existing:
        gi.write_text(existing + GITIGNORE)
    ws = Workspace(root, load_settings(root / CONFIG_FILE))
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    from modelworks.apply import signing_key
    from modelworks.security.secrets import generate_sealing_key

    signing_key(ws)
    sealing = ws.path(ws.settings.signing.public_key).parent / "sealing-key.pub"
    generate_sealing_key(ws.state_dir / "keys" / "sealing-key.txt", sealing)
    paths: list[Any] = [CONFIG_FILE, ".gitignore", "models", "pipelines", "data", "deploy", "keys"]
    _git.commit(root, paths, "mw init: new modelworks workspace")
    if example:
        populate(ws, "example")
    return ws


def populate(ws: Workspace, fleet: str, **kwargs: Any) -> int:
    """Write the example or demo fleet into a workspace: pipelines, versioned data, specs."""
    from modelworks import examples
    from modelworks.data.add import add

    builder = examples.example_fleet if fleet == "example" else examples.demo_fleet
    pipelines = {examples.CLASSIFICATION, examples.FORECASTING, examples.KUBEFLOW}
    if fleet != "example":
        pipelines.add(examples.ANOMALY)
    if not _has_kfp():
        pipelines.discard(examples.KUBEFLOW)
    for p in sorted(pipelines):
        examples.copy_pipeline(p, ws.pipelines_dir)
    count = 0
    for data_file, specs in builder(ws.root, **kwargs):
        for payload in specs:
            if payload["kubeflow_pipeline"] not in pipelines:
                _skipped(payload["model_name"])
                continue
            examples.write_spec(ws.models_dir, payload)
            count += 1
        add(ws, data_file, commit=False)
    _git.commit(ws.root, ["models", "pipelines", "data"], f"{fleet} fleet: {count} models")
    return count


def _has_kfp() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("kfp") is not None
    except (ImportError, ValueError):
        return False


def _skipped(name: str) -> None:
    from modelworks._console import err_console
    from modelworks.pipelines.kfp import EXTRA

    note = f"note: {name} skipped: its Kubeflow pipeline needs the kfp SDK ({EXTRA})"
    err_console.print(note, markup=False, highlight=False, soft_wrap=True)
