"""Run the bundle's configs as a user does: ``python -m monai.bundle run`` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from tests.conftest import DEMO_DIR, REPO_ROOT

TINY_RUN = REPO_ROOT / "tests" / "data" / "tiny_run.yaml"
TINY_MODEL = REPO_ROOT / "tests" / "data" / "tiny_model.yaml"
# stages whose network comes from a checkpoint: a network override does not apply to them
FROM_CHECKPOINT = {"sync", "finetune", "evaluate", "inference"}


def config_files(*names: str, tiny: bool = True) -> list[str]:
    """Stage configs (``"pretrain"``) plus the test-size overrides: a short run, and the tiny network
    where the stage builds one."""
    files = [f"configs/{name}.yaml" for name in names]
    if tiny:
        files.append(str(TINY_RUN))
        if not FROM_CHECKPOINT & set(names):
            files.append(str(TINY_MODEL))
    return files


def config_list(*names: str, tiny: bool = True) -> str:
    """The ``--config_file`` value of :func:`config_files`."""
    return repr(config_files(*names, tiny=tiny))


def bundle_command(verb: str, *args: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "monai.bundle", verb, *args]


def run_bundle(
    *names: str, overrides: dict | None = None, tiny: bool = True, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run --config_file [...] --key value ...`` from the bundle root."""
    args = ["--config_file", config_list(*names, tiny=tiny), "--meta_file", "configs/metadata.json"]
    args += ["--logging_file", "configs/logging.conf"]
    for key, value in (overrides or {}).items():
        args += [f"--{key}", str(value)]
    result = subprocess.run(
        bundle_command("run", *args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=subprocess_env()
    )
    if check and result.returncode != 0:
        raise AssertionError(f"bundle run {names} failed ({result.returncode}):\n{result.stderr[-6000:]}")
    return result


def bare_inference(input_dir: Path, output_dir: Path, checkpoint: Path, organ: str, object_type: str) -> str:
    """The README's inference command, nothing added: ``--config_file configs/inference.yaml`` and the checkpoint."""
    command = bundle_command(
        "run", "--config_file", "configs/inference.yaml", "--input_dir", str(input_dir), "--output_dir", str(output_dir),
        "--organ", organ, "--object_type", object_type, "--ckpt_path", str(checkpoint),
    )  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout + result.stderr


def subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def write_small_datalist(path: Path, per_group: dict[str, int]) -> Path:
    """A datalist with the first few demo samples of every dataset / task, absolute paths.

    per_group: samples kept per (dataset, task) for each datalist key, e.g. {"training": 4}.
    """
    source = json.loads((DEMO_DIR / "datalist.json").read_text())
    small = {}
    for key, keep in per_group.items():
        counts: dict[tuple, int] = defaultdict(int)
        small[key] = []
        for entry in source[key]:
            group = (entry["dataset"], entry["task"])
            if counts[group] < keep:
                counts[group] += 1
                small[key].append({k: str(DEMO_DIR / v) if k in ("image", "label", "mask") else v for k, v in entry.items()})
    path.write_text(json.dumps(small, indent=1))
    return path
