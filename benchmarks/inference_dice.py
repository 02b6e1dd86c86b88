"""Dice of the bare inference command on a labelled split, scored at each image's original size.

The evaluation the issues quote on images no one here has seen runs ``configs/inference.yaml``
(letterbox geometry, masks written at the source size) and compares the written masks with the
ground truth. ``configs/evaluate.yaml`` scores at the network's input size after a centre crop,
which is another figure; this tool reproduces the first on a split of the demo registry, one
bare inference command per segmentation dataset, so that a recipe is chosen by what users get.

    python -m benchmarks.inference_dice --ckpt_path models/model.pt [--split test] [--json r.json] \
        [--keep_largest_component false ...]

Options it does not know (``--key value``) go to every inference command unchanged.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice

from bundle.data import load_registry, load_samples
from bundle.transforms.io import LoadImage2D

ROOT = Path(__file__).resolve().parents[1]


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean (H, W) masks of one size (MONAI's ``compute_dice``)."""
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and ground truth {truth.shape} differ in size")
    as_batch = lambda mask: torch.as_tensor(mask, dtype=torch.float32)[None, None]  # noqa: E731
    return float(compute_dice(as_batch(prediction), as_batch(truth), include_background=True))


def inference_command(
    input_dir: Path, output_dir: Path, organ: str, object_type: str, ckpt_path: Path, extra: Sequence[str] = ()
) -> list[str]:
    """The bare inference command of the issues on one folder of images, then ``extra`` arguments."""
    return [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml",
        "--input_dir", str(input_dir), "--output_dir", str(output_dir),
        "--organ", organ, "--object_type", object_type, "--ckpt_path", str(ckpt_path), *extra,
    ]  # fmt: skip


def score_split(
    ckpt_path: Path,
    dataset_dir: Path,
    split: str,
    work_dir: Path,
    extra: Sequence[str] = (),
    registry_file: Path | None = None,
    datalist: Path | Sequence[Path] | None = None,
) -> dict[str, dict[str, float]]:
    """Mean Dice per image (empty ground truth excluded) per segmentation dataset of ``split``.

    ``extra``: further arguments of every inference command (``["--fill_holes", "false"]``).
    ``registry_file`` (default ``dataset_dir/datasets.yaml``) and ``datalist`` (one JSON or a list)
    choose the samples as the training configs do.

    Returns:
        {dataset: {"dice": mean, "images": n, "seconds": inference wall time, "per_image": {stem: Dice}}}.
    """
    registry = load_registry(registry_file or dataset_dir / "datasets.yaml")
    samples = [s for s in load_samples(registry, split, datalist) if s["task"] == "segmentation"]
    load = LoadImage2D()
    results: dict[str, dict[str, float]] = {}
    for dataset in sorted({s["dataset"] for s in samples}):
        members = [s for s in samples if s["dataset"] == dataset]
        inputs, outputs = work_dir / "inputs" / dataset, work_dir / "outputs" / dataset
        shutil.rmtree(inputs, ignore_errors=True)
        inputs.mkdir(parents=True)
        for sample in members:
            shutil.copy(sample["image"], inputs)
        command = inference_command(inputs, outputs, members[0]["organ"], members[0]["object_type"], ckpt_path, extra)
        start = time.monotonic()
        finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if finished.returncode:
            raise RuntimeError(f"inference on {dataset} failed:\n{finished.stdout[-3000:]}{finished.stderr[-3000:]}")
        seconds = time.monotonic() - start
        per_image = {}
        for sample in members:
            truth = np.asarray(load(sample["label"]))[0] > 0
            if not truth.any():
                continue
            stem = Path(sample["image"]).stem
            per_image[stem] = dice(np.asarray(load(outputs / f"{stem}.png"))[0] > 0, truth)
        results[dataset] = {
            "dice": float(np.mean(list(per_image.values()))), "images": len(per_image), "seconds": round(seconds, 1),
            "per_image": {stem: round(float(score), 4) for stem, score in per_image.items()},
        }  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", type=Path, default=ROOT / "models" / "model.pt")
    parser.add_argument("--dataset_dir", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--split", default="test")
    parser.add_argument("--registry_file", type=Path, help="default: DATASET_DIR/datasets.yaml")
    parser.add_argument("--datalist", type=Path, nargs="+", help="datalist JSON(s) naming the samples")
    parser.add_argument("--work_dir", type=Path, help="keep the inputs and written masks here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args, extra = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as temporary:
        work_dir = args.work_dir or Path(temporary)
        results = score_split(
            args.ckpt_path.resolve(), args.dataset_dir.resolve(), args.split, work_dir.resolve(), extra,
            args.registry_file, args.datalist,
        )  # fmt: skip
    print(f"| dataset | images | mean Dice per image (original size) | inference s |\n|---|---|---|---|")
    for dataset, row in results.items():
        print(f"| {dataset} | {row['images']} | {row['dice']:.3f} | {row['seconds']} |")
    if args.json:
        record = {
            "ckpt_path": str(args.ckpt_path), "split": args.split, "registry_file": str(args.registry_file),
            "datalist": [str(path) for path in args.datalist or []], "inference_args": extra, "results": results,
        }  # fmt: skip
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
