"""The main job (``make demo``): evaluate the shipped weights, adapt them to two datasets they have never
seen, and run the adapted model on demo images.

1. Evaluate the shipped ``models/pretrained.pt`` on the demo test split.
2. Adapt it to the labelled images of ``../shared/data_adapt`` (ovarian lesions, ``mmotu``; breast
   lesions of another hospital, ``busbra``): ``scripts/make_datalist.py`` makes each folder a
   dataset, then ``configs/finetune.yaml`` trains from the shipped weights while replaying the demo
   datasets (rehearsal). Dice before and after is printed for the new datasets and the old ones; the
   adapted checkpoint is ``models/model.pt``, which the inference, evaluate and Label defaults then
   serve (the shipped file stays as it is).
3. Run the bare inference command with ``models/model.pt`` on a few demo test images.

``--train`` (``make train-demo``) first trains the shipped weights' recipe from scratch and adapts
and runs that instead. Each stage is the bundle's own command (``python -m monai.bundle run`` or a
script), so what this does a user can do by hand; the commands are printed before they run.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the recipe of models/pretrained.pt: the CPU setting and the shipped weights' overrides on pretraining
SHIPPED_RECIPE = ["configs/pretrain.yaml", "configs/cpu.yaml", "configs/shipped.yaml"]
SHIPPED = ROOT / "models" / "pretrained.pt"
ADAPTED = ROOT / "models" / "model.pt"
ADAPT_RECIPE = ["configs/pretrain.yaml", "configs/cpu.yaml", "configs/finetune.yaml"]
ADAPT_DIR = ROOT.parent / "shared" / "data_adapt"
# new dataset folder -> (organ, object type)
ADAPT_DATASETS = {"mmotu": ("ovary", "tumor"), "busbra": ("breast", "tumor")}
# trained from scratch by --train, beside the shipped weights rather than over them
TRAINED_DIR = ROOT / "models" / "demo"
PROMPTS = {"BUSI": ("breast", "tumor"), "Fetal_HC": ("head", "organ"), "TG3K": ("thyroid", "organ")}
WORK = ROOT / "runs" / "demo"


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


def evaluate(title: str, checkpoint: Path, eval_dir: Path, **data: str) -> dict[str, float]:
    """evaluate.yaml on ``data`` (default: the demo test split); dataset -> mean Dice per image."""
    overrides = {"eval_dir": str(eval_dir), "ckpt_path": str(checkpoint), **data}
    run(title, bundle_run(["configs/evaluate.yaml"], **overrides))
    with open(eval_dir / "metrics.csv", newline="", encoding="utf-8") as handle:
        return {row["dataset"]: float(row["dice"]) for row in csv.DictReader(handle) if row["seg_n"] and row["dataset"] != "mean"}


def adaptation_data(adapt_dir: Path) -> tuple[Path, list[Path]]:
    """Each new dataset folder as a one-dataset datalist, every labelled image for training; (registry, datalists)."""
    data = WORK / "adapt_data"
    shutil.rmtree(data, ignore_errors=True)
    registry, datalists = data / "datasets.yaml", []
    for name, (organ, object_type) in ADAPT_DATASETS.items():
        datalist = data / f"{name}.json"
        command = [
            sys.executable, "scripts/make_datalist.py", str(adapt_dir / name), "--out", str(datalist),
            "--registry", str(registry), "--dataset", name, "--task", "segmentation", "--organ", organ,
            "--object-type", object_type, "--fractions", "1", "0", "0",
        ]  # fmt: skip
        run(f"datalist of {name} ({organ} / {object_type})", command)
        datalists.append(datalist)
    return registry, datalists


def adapt(start: Path, adapt_dir: Path, epochs: str) -> dict[str, tuple[float, float]]:
    """Adapt ``start`` to the new datasets (with rehearsal of the demo ones) into ``models/model.pt``;
    dataset -> (Dice before, Dice after) on the new datasets' images and the demo test split."""
    registry, datalists = adaptation_data(adapt_dir)
    # every image whole, as the inference command sees it (the official centre crop cuts lesions at the border)
    whole = {"geometry": "letterbox"}
    new_data = {"registry_file": str(registry), "datalist": repr([str(p) for p in datalists]), "split": "train", **whole}
    before = evaluate("before: the start on the new datasets' images", start, WORK / "eval_new_before", **new_data)
    before_old = evaluate("before: the start on the demo test split", start, WORK / "eval_old_before", **whole)
    ckpt_dir = WORK / "adapted"
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    overrides = {
        "registry_file": str(registry), "datalist": repr([str(p) for p in datalists]), "init_ckpt": str(start),
        "rehearsal_registry_file": str(ROOT / "data" / "demo" / "datasets.yaml"), "epochs": epochs,
        "ckpt_dir": str(ckpt_dir), "output_dir": str(WORK / "adapt_runs"),
    }  # fmt: skip
    run("adapt to the new datasets (finetune.yaml, replaying the demo datasets)", bundle_run(ADAPT_RECIPE, **overrides))
    partial = ADAPTED.with_name(ADAPTED.name + ".partial")
    shutil.copyfile(ckpt_dir / "model.pt", partial)
    partial.replace(ADAPTED)
    after = evaluate("after: models/model.pt on the new datasets' images", ADAPTED, WORK / "eval_new_after", **new_data)
    after_old = evaluate("after: models/model.pt on the demo test split", ADAPTED, WORK / "eval_old_after", **whole)
    return {name: (value, after[name]) for name, value in before.items()} | {
        name: (value, after_old[name]) for name, value in before_old.items()
    }


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
    parser.add_argument("--adapt_dir", type=Path, default=ADAPT_DIR, help="folders of the new datasets")
    parser.add_argument("--adapt_epochs", default="8", help="epochs of the adaptation (about 25 s each on 2 cores)")
    parser.add_argument("--images", type=int, default=4, help="demo images per dataset for the inference step")
    args = parser.parse_args()

    if args.train:
        start = train(args.epochs)
    elif SHIPPED.is_file():
        start = SHIPPED
    else:
        sys.exit(f"no shipped weights at {SHIPPED}: fetch them (docs/download.md) or train them with `make train-demo`")
    eval_dir, predictions = ROOT / "eval", ROOT / "predictions"
    # the checkpoint describes its network: the stages that run it need no CPU setting
    evaluate("evaluate the shipped weights on the held-out test split", start, eval_dir)
    changes = None
    if all((args.adapt_dir / name / "images").is_dir() for name in ADAPT_DATASETS):
        changes = adapt(start, args.adapt_dir, args.adapt_epochs)
        checkpoint = ADAPTED
    else:
        print(f"\n=== no adaptation: {args.adapt_dir} does not hold {sorted(ADAPT_DATASETS)} (../shared/data_adapt)")
        checkpoint = start
    infer_demo_images(checkpoint, predictions, args.images)

    print("\nResults")
    print(f"  shipped weights    : {start}")
    print(f"  metrics table      : {eval_dir / 'metrics.md'} (and metrics.csv)")
    print(f"  best/worst overlays: {eval_dir / 'overlays'}")
    if changes:
        print(f"  adapted checkpoint : {ADAPTED} (the default of inference, evaluate and the Label app)")
        print(f"  adaptation evals   : {WORK}/eval_*/metrics.md")
    print(f"  inference outputs  : {predictions}/<dataset>/ (masks, *_overlay.png, predictions.csv)")
    if args.train:
        print(f"  TensorBoard        : tensorboard --logdir {ROOT / 'runs'}")
    print()
    print((eval_dir / "metrics.md").read_text())
    if changes:
        print("Adaptation (mean Dice per image at the input size, each image letterboxed whole; new datasets: their")
        print("labelled images, all trained on; old datasets: the demo test split)\n")
        print("| dataset | before | after |\n|---|---|---|")
        for name, (before, after) in changes.items():
            print(f"| {name} | {before:.3f} | {after:.3f} |")


if __name__ == "__main__":
    main()
