"""The main job (``make demo``): pretrain on the shipped demo data with the CPU setting, evaluate
on the held-out test split, and run inference on a few demo images.

Each stage is the bundle's own command, ``python -m monai.bundle run``, so what this script does a
user can do by hand; the commands are printed before they run.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_SETTING = "configs/cpu.yaml"


def bundle_run(configs: list[str], **overrides: str) -> list[str]:
    """``python -m monai.bundle run`` for the config files ``configs`` (later ones override)."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr(configs)]
    command += ["--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf"]
    for key, value in overrides.items():
        command += [f"--{key}", value]
    return command


def run(title: str, command: list[str]) -> None:
    print(f"\n=== {title}\n$ {shlex.join(command)}", flush=True)
    start = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=True)
    print(f"=== {title}: done in {time.monotonic() - start:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", help="override the CPU setting's number of pretraining epochs")
    parser.add_argument("--images", type=int, default=4, help="demo images per dataset for the inference step")
    args = parser.parse_args()

    models, eval_dir, predictions = ROOT / "models", ROOT / "eval", ROOT / "predictions"
    # a fresh run: stale epoch checkpoints would otherwise be mistaken for this run's
    for stale in models.glob("checkpoint_*.pt"):
        stale.unlink()
    pretrain_overrides = {"epochs": args.epochs} if args.epochs else {}
    run("1/3 pretrain (CPU setting, demo data)", bundle_run(["configs/pretrain.yaml", CPU_SETTING], **pretrain_overrides))
    # the checkpoint describes its network: the stages that run it take no CPU setting
    run("2/3 evaluate on the held-out test split", bundle_run(["configs/evaluate.yaml"], eval_dir=str(eval_dir)))

    inputs = ROOT / "predictions_input"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir()
    prompts = {"BUSI": ("breast", "tumor"), "Fetal_HC": ("head", "organ"), "TG3K": ("thyroid", "organ")}
    for dataset, (organ, object_type) in prompts.items():
        folder = inputs / dataset
        folder.mkdir()
        test_files = (ROOT / "data/demo/segmentation" / dataset / "test.txt").read_text().split()[: args.images]
        for name in test_files:
            shutil.copy(ROOT / "data/demo/segmentation" / dataset / "imgs" / name, folder)
        run(
            f"3/3 inference on {dataset} test images",
            bundle_run(
                ["configs/inference.yaml"], input_dir=str(folder), output_dir=str(predictions / dataset),
                organ=organ, object_type=object_type,
            ),
        )  # fmt: skip
    shutil.rmtree(inputs)

    print("\nResults")
    print(f"  trained checkpoint : {models / 'model.pt'}")
    print(f"  metrics table      : {eval_dir / 'metrics.md'} (and metrics.csv)")
    print(f"  best/worst overlays: {eval_dir / 'overlays'}")
    print(f"  inference outputs  : {predictions}/<dataset>/ (masks, *_overlay.png, predictions.csv)")
    print(f"  TensorBoard        : tensorboard --logdir {ROOT / 'runs'}\n")
    print((eval_dir / "metrics.md").read_text())


if __name__ == "__main__":
    main()
