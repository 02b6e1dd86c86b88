"""Train the shipped student (``make train-student``): distil ``models/pretrained.pt`` into a compact
PerceptGuide on the demo data and the unlabelled pool, and write ``models/student.pt``.

1. The unlabelled pool (``../shared/unlabelled``: breast, fetal head and thyroid frames) becomes one
   folder of links per dataset under ``data/unlabelled``, leaving out every image that is also in the
   labelled data (``provenance.csv``), so that no test image is seen even without its label.
2. ``configs/distill.yaml`` over the CPU recipe trains the student beside the frozen teacher: the task
   loss on the demo training split, the teacher's outputs and stage features on every image.
3. The last weights are copied to ``models/student.pt``.

The command is printed before it runs; ``--resume`` continues an interrupted run. ``--alone`` trains
the same student by the same recipe without its teacher (no distillation terms, no unlabelled images):
the baseline the distillation is measured against (``benchmarks/distillation_study.py``); ``--no_pool``
leaves the unlabelled pool out. Any further ``--key value`` pair is passed to the bundle command as a
config override (e.g. ``--distill_feature_weight 0`` switches the feature term off).
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
RECIPE = ["configs/pretrain.yaml", "configs/cpu.yaml", "configs/distill.yaml"]
TEACHER = ROOT / "models" / "pretrained.pt"
STUDENT = ROOT / "models" / "student.pt"
POOL_DIR = ROOT.parent / "shared" / "unlabelled"
# the overrides that leave the teacher out: the student's own network and the task loss alone
ALONE = {"train#network": "@network", "train#loss": "@loss", "train#state#model": "@network"}
# pool folder -> (organ, object type): the prompts of the demo dataset it comes from
POOL_PROMPTS = {"busi": ("breast", "tumor"), "hc18": ("head", "organ"), "tg3k": ("thyroid", "organ")}


def link_pool(pool_dir: Path, destination: Path) -> list[dict]:
    """Links to the pool images that are not in the labelled data, one folder per dataset; the ``unlabelled_dirs``."""
    with open(pool_dir / "provenance.csv", newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["also_in_shared_labelled"] == "no"]
    entries = []
    for folder, (organ, object_type) in POOL_PROMPTS.items():
        target = destination / folder
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for row in rows:
            source = pool_dir / folder / f"{row['id']}.png"
            if source.is_file():
                (target / source.name).symlink_to(source.resolve())
        entries.append({"dir": str(target), "organ": organ, "object_type": object_type})
        print(f"{target}: {sum(1 for _ in target.iterdir())} unlabelled images ({organ} / {object_type})")
    return entries


def parse_arguments(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, str]]:
    """The script's options, and the further ``--key value`` pairs as config overrides {key: value}."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=TEACHER)
    parser.add_argument("--pool_dir", type=Path, default=POOL_DIR, help="unlabelled pool; absent: labelled images only")
    parser.add_argument("--epochs", help="override distill.yaml's number of epochs")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--ckpt_dir", type=Path, default=ROOT / "models" / "distill")
    parser.add_argument("--output", type=Path, default=STUDENT, help="where the student is copied")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--alone", action="store_true", help="train the student without the teacher (the baseline)")
    parser.add_argument("--no_pool", action="store_true", help="distil on the labelled images only")
    args, extra = parser.parse_known_args(argv)
    if len(extra) % 2 or not all(key.startswith("--") and len(key) > 2 for key in extra[::2]):
        parser.error(f"further arguments are config overrides, '--key value' pairs; got {extra}")
    return args, dict(zip((key[2:] for key in extra[::2]), extra[1::2]))


def bundle_command(args: argparse.Namespace, config_overrides: dict[str, str]) -> list[str]:
    """The ``python -m monai.bundle run`` command of the recipe with the options' and the further overrides;
    links the unlabelled pool (:func:`link_pool`) when the run distils on it."""
    overrides = {"teacher_ckpt": str(args.teacher), "seed": args.seed, "ckpt_dir": str(args.ckpt_dir),
                 "output_dir": str(ROOT / "runs" / args.ckpt_dir.name), "resume": str(args.resume).lower()}  # fmt: skip
    if args.alone:
        overrides.update(ALONE)
    elif args.pool_dir.is_dir() and not args.no_pool:
        overrides["unlabelled_dirs"] = repr(link_pool(args.pool_dir, ROOT / "data" / "unlabelled"))
    if args.epochs:
        overrides["epochs"] = args.epochs
    overrides.update(config_overrides)
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr(RECIPE),
               "--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf"]  # fmt: skip
    for key, value in overrides.items():
        command += [f"--{key}", value]
    return command


def main() -> None:
    args, config_overrides = parse_arguments()
    command = bundle_command(args, config_overrides)
    if not args.resume:
        for stale in args.ckpt_dir.glob("checkpoint_*.pt"):  # a fresh run: not to be mistaken for this one's
            stale.unlink()
    print(f"$ {shlex.join(command)}", flush=True)
    start = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.ckpt_dir / "model.pt", args.output)
    print(f"student: {args.output} ({time.monotonic() - start:.0f} s of training)")


if __name__ == "__main__":
    main()
