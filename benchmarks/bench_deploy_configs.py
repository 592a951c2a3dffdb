"""Apply's deploy step at fleet scale: read and write only the changed models' configs.

A deploy repo with N configs in test (default 9,000). Each measurement is a fresh process:

- baseline: what deploy_auto did before, read every config of the env (read_worktree_env),
  then write the changed ones;
- changed-only: read just the changed models' configs (read_worktree_configs), then write.

Prints the median and spread of each over --repeat runs and the ratio baseline / changed-only.

    python benchmarks/bench_deploy_configs.py --configs 9000 --changed 3 --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import sys, time
from pathlib import Path
from modelworks.gitops.deploy import (
    DeployConfig, read_worktree_configs, read_worktree_env, write_configs,
)
repo, mode, changed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
names = [f"model-{i}" for i in range(changed)]
t0 = time.perf_counter()
if mode == "baseline":
    current = read_worktree_env(repo, "test")
else:
    current = read_worktree_configs(repo, "test", names)
new = [current[n].model_copy(update={"version": "v2"}) for n in names]
write_configs(repo, "test", new)
print(time.perf_counter() - t0)
"""


def build(repo: Path, n: int) -> None:
    from modelworks import _git
    from modelworks.gitops.deploy import DeployConfig, write_configs

    _git.init(repo)
    configs = [
        DeployConfig(
            name=f"model-{i}",
            image_repository=f"registry.example/team/model-{i}",
            image_namespace="team",
            version="v1",
            runtime="sklearn",
            artifact_digest="sha256:" + f"{i:064x}",
            artifact_uri=f"oci://registry.example/team/model-{i}:v1",
        )
        for i in range(n)
    ]
    _git.commit(repo, write_configs(repo, "test", configs), "fleet")


def run(repo: Path, mode: str, changed: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(repo), mode, str(changed)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=9000)
    parser.add_argument("--changed", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mw-bench-deploy-") as tmp:
        repo = Path(tmp) / "deploy"
        t0 = time.perf_counter()
        build(repo, args.configs)
        print(f"built {args.configs} configs in {time.perf_counter() - t0:.1f} s")
        times: dict[str, list[float]] = {"baseline": [], "changed-only": []}
        for _ in range(args.repeat):  # interleaved, so machine noise hits both alike
            for mode in times:
                subprocess.run(["git", "-C", str(repo), "checkout", "-q", "--", "."], check=True)
                times[mode].append(run(repo, mode, args.changed))
    for mode, values in times.items():
        spread = max(values) - min(values)
        print(f"{mode:>13}: median {statistics.median(values):.4f} s (spread {spread:.4f} s)")
    ratio = statistics.median(times["baseline"]) / statistics.median(times["changed-only"])
    print(f"ratio baseline / changed-only: {ratio:.0f}x ({args.changed} changed of {args.configs})")


if __name__ == "__main__":
    main()
