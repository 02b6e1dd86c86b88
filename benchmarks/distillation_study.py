"""The distillation study: the student distilled from its teacher against the same student trained alone.

Cells, each for every seed of ``--seeds``, by the bundle's own command (``scripts/distill.py``):

- ``distilled``: configs/distill.yaml as the shipped student is trained (teacher outputs and stage
  features, the unlabelled pool);
- ``alone``: the same student, recipe and number of epochs without the teacher (``--alone``: the
  task loss on the labelled images only);
- ablations, not run unless named in ``--cells``: ``distilled`` with one part left out,
  ``no_features`` (``distill_feature_weight`` 0), ``no_logits`` (``distill_seg_weight`` and
  ``distill_cls_weight`` 0) or ``no_pool`` (no unlabelled images: the labelled ones only).

Every student, and the teacher, is scored by the bare inference command on the demo test split
(``benchmarks.inference_dice``: letterbox, masks at each image's original size). The runs go one
after another with ``--threads`` threads; ``results.json`` in ``--work_dir`` keeps every cell, and
a cell already there is not run again.

Usage::

    python -m benchmarks.distillation_study [--epochs 25] [--seeds 0 1] [--cells distilled alone no_features no_logits no_pool] \\
        [--teacher models/pretrained.pt] [--work_dir runs/distillation_study] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from benchmarks import BUNDLE_ROOT
from benchmarks.benchmark import machine
from benchmarks.inference_dice import score_split

CELLS = {
    "distilled": [],
    "alone": ["--alone"],
    "no_features": ["--distill_feature_weight", "0"],
    "no_logits": ["--distill_seg_weight", "0", "--distill_cls_weight", "0"],
    "no_pool": ["--no_pool"],
}
DEFAULT_CELLS = ["distilled", "alone"]


def train_student(cell: str, seed: int, epochs: int, teacher: Path, work_dir: Path, threads: int) -> tuple[Path, float]:
    """``scripts/distill.py`` for one cell and seed; the student checkpoint and the training seconds."""
    folder = work_dir / f"{cell}_seed{seed}"
    output = folder / "student.pt"
    command = [sys.executable, "scripts/distill.py", "--teacher", str(teacher), "--epochs", str(epochs),
               "--seed", str(seed), "--ckpt_dir", str(folder / "models"), "--output", str(output), *CELLS[cell]]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    start = time.monotonic()
    with open(folder.with_suffix(".log"), "w", encoding="utf-8") as log:
        finished = subprocess.run(command, cwd=BUNDLE_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    if finished.returncode:
        raise RuntimeError(f"{cell} seed {seed} failed: see {folder.with_suffix('.log')}")
    return output, time.monotonic() - start


def summary(rows: Sequence[Mapping]) -> dict[str, dict[str, str]]:
    """cell -> dataset -> 'mean ± sd (n)' over seeds."""
    cells: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        for dataset, score in row["dice"].items():
            cells.setdefault(row["cell"], {}).setdefault(dataset, []).append(score)
    return {
        cell: {d: f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0:.3f} ({len(v)})" for d, v in datasets.items()}
        for cell, datasets in cells.items()
    }


def table(rows: Sequence[Mapping]) -> str:
    datasets = sorted({d for row in rows for d in row["dice"]})
    lines = ["| cell | seed | " + " | ".join(datasets) + " | training s |", "|---" * (len(datasets) + 3) + "|"]
    for row in rows:
        cells = " | ".join(f"{row['dice'][d]:.3f}" for d in datasets)
        lines.append(f"| {row['cell']} | {row.get('seed', '–')} | {cells} | {row.get('seconds', 0):.0f} |")
    lines.append("")
    for cell, per_dataset in summary(rows).items():
        lines.append(f"{cell}: " + ", ".join(f"{d} {value}" for d, value in per_dataset.items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--cells", nargs="+", default=DEFAULT_CELLS, choices=list(CELLS))
    parser.add_argument("--teacher", type=Path, default=BUNDLE_ROOT / "models" / "pretrained.pt")
    parser.add_argument("--work_dir", type=Path, default=BUNDLE_ROOT / "runs" / "distillation_study")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results_file = args.work_dir / "results.json"
    rows = json.loads(results_file.read_text())["rows"] if results_file.is_file() else []
    done = {(row["cell"], row.get("seed")) for row in rows}

    def score(checkpoint: Path, name: str) -> dict[str, float]:
        scores = score_split(checkpoint.resolve(), BUNDLE_ROOT / "data" / "demo", "test", args.work_dir / f"score_{name}")
        return {dataset: row["dice"] for dataset, row in scores.items()}

    def save() -> None:
        record = {"epochs": args.epochs, "teacher": str(args.teacher), "threads": args.threads, "machine": machine(), "rows": rows}
        results_file.write_text(json.dumps(record, indent=1) + "\n")

    if ("teacher", None) not in done:
        rows.append({"cell": "teacher", "dice": score(args.teacher, "teacher")})
        save()
    for seed in args.seeds:
        for cell in args.cells:
            if (cell, seed) in done:
                continue
            checkpoint, seconds = train_student(cell, seed, args.epochs, args.teacher.resolve(), args.work_dir.resolve(), args.threads)
            rows.append({"cell": cell, "seed": seed, "seconds": seconds, "dice": score(checkpoint, f"{cell}_seed{seed}")})
            save()
            print(table(rows), flush=True)
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
