"""The main job (``make demo``): evaluate the shipped weights on the demo test split and run
inference on a few demo images; ``--train`` (``make train-demo``) first trains the shipped
weights' recipe from scratch and runs the same steps on what it trained.

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
# the recipe of models/model.pt: the CPU setting and the shipped weights' overrides on pretraining
SHIPPED_RECIPE = ["configs/pretrain.yaml", "configs/cpu.yaml", "configs/shipped.yaml"]
SHIPPED = ROOT / "models" / "model.pt"
# trained from scratch by --train, beside the shipped weights rather than over them
TRAINED_DIR = ROOT / "models" / "demo"
PROMPTS = {"BUSI": ("breast", "tumor"), "Fetal_HC": ("head", "organ"), "TG3K": ("thyroid", "organ")}


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


def train(epochs: str | None) -> Path:
    """Pretrain the shipped weights' recipe on the demo data; returns its checkpoint."""
    for stale in TRAINED_DIR.glob("checkpoint_*.pt"):  # a fresh run: not to be mistaken for this one's
        stale.unlink()
    overrides = {"ckpt_dir": str(TRAINED_DIR), **({"epochs": epochs} if epochs else {})}
    run("pretrain from scratch (the shipped recipe, demo data)", bundle_run(SHIPPED_RECIPE, **overrides))
    return TRAINED_DIR / "model.pt"


def infer_demo_images(checkpoint: Path, predictions: Path, images: int) -> None:
    """The bare inference command on the first ``images`` test images of each demo dataset."""
    inputs = ROOT / "predictions_input"
    shutil.rmtree(inputs, ignore_errors=True)
    for dataset, (organ, object_type) in PROMPTS.items():
        folder = inputs / dataset
        folder.mkdir(parents=True)
        test_files = (ROOT / "data/demo/segmentation" / dataset / "test.txt").read_text().split()[:images]
        for name in test_files:
            shutil.copy(ROOT / "data/demo/segmentation" / dataset / "imgs" / name, folder)
        command = bundle_run(
            ["configs/inference.yaml"], input_dir=str(folder), output_dir=str(predictions / dataset),
            organ=organ, object_type=object_type, ckpt_path=str(checkpoint),
        )  # fmt: skip
        run(f"inference on {dataset} test images", command)
    shutil.rmtree(inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="store_true", help="train the shipped recipe from scratch first (make train-demo)")
    parser.add_argument("--epochs", help="with --train: override the recipe's number of epochs")
    parser.add_argument("--images", type=int, default=4, help="demo images per dataset for the inference step")
    args = parser.parse_args()

    if args.train:
        checkpoint = train(args.epochs)
    elif SHIPPED.is_file():
        checkpoint = SHIPPED
    else:
        sys.exit(f"no shipped weights at {SHIPPED}: fetch them (docs/download.md) or train them with `make train-demo`")
    eval_dir, predictions = ROOT / "eval", ROOT / "predictions"
    # the checkpoint describes its network: the stages that run it need no CPU setting
    run("evaluate on the held-out test split", bundle_run(["configs/evaluate.yaml"], eval_dir=str(eval_dir), ckpt_path=str(checkpoint)))
    infer_demo_images(checkpoint, predictions, args.images)

    print("\nResults")
    print(f"  checkpoint         : {checkpoint}")
    print(f"  metrics table      : {eval_dir / 'metrics.md'} (and metrics.csv)")
    print(f"  best/worst overlays: {eval_dir / 'overlays'}")
    print(f"  inference outputs  : {predictions}/<dataset>/ (masks, *_overlay.png, predictions.csv)")
    if args.train:
        print(f"  TensorBoard        : tensorboard --logdir {ROOT / 'runs'}")
    print()
    print((eval_dir / "metrics.md").read_text())


if __name__ == "__main__":
    main()
