"""Pseudo-labels from a convolutional teacher: the foundation issue's DeiT lever, measured.

A data-poor transformer learns faster from a convolutional network's masks than from its few
labels alone (DeiT's remedy). Here the MONAI U-Net of ``benchmarks.unet_baseline`` (trained on the
demo training split, ``--save``) labels unlabelled folders exactly as the bundle's inference
command labels a user's images: letterbox to the input size, logits mapped back to the original
size, argmax, largest component kept and holes filled (``PredictionWriter``). Each folder becomes a
labelled dataset ``OUT/<name>/images`` (links to the sources) + ``OUT/<name>/masks`` (0/255 PNGs),
with the overlays in ``OUT/overlays/<name>``, listed by the bundle's own ``make_datalist`` (all
training, ``OUT/<name>.json``) and declared in ``OUT/datasets.yaml``, so that ``pretrain.yaml``
trains on it with the true labels replayed::

    python -m monai.bundle run --config_file "['configs/pretrain.yaml','configs/cpu.yaml']" \\
        --registry_file OUT/datasets.yaml --datalist "['OUT/busi.json', ...]" \\
        --rehearsal_registry_file data/demo/datasets.yaml --rehearsal_share 0.5 ...

Usage::

    python -m benchmarks.pseudo_labels --teacher unet.pt --image_size 160 --out runs/pseudo/data \\
        --source ../shared/unlabelled/busi busi breast tumor --source ../shared/unlabelled/hc18 hc18 head organ \\
        [--provenance ../shared/unlabelled/provenance.csv]

``--provenance`` leaves out the pool images its CSV flags ``also_in_shared_labelled = yes``: the
demo's own images, its test images among them, must not come back as targets.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from ignite.engine import Engine
from monai.data import DataLoader, Dataset
from monai.utils import CommonKeys as Keys

from benchmarks.unet_baseline import build_unet
from bundle.data.files import stem_of
from bundle.data.scan import DatalistSpec, make_datalist
from bundle.prompts import SEGMENTATION
from bundle.transforms import inference_transforms
from bundle.workflows.inference import PredictionWriter, collect_images, mask_postprocessing, readable_samples

__all__ = ["flagged_ids", "label_folder", "main"]


def binary_classes(object_type: str) -> dict[str, int]:
    """The mask values ``PredictionWriter`` writes for a binary model, declared rather than read from
    the masks (a teacher that finds no object, or only object, leaves one value there)."""
    return {"background": 0, object_type: 255}


def flagged_ids(provenance: str | Path) -> set[str]:
    """The ids a pool's ``provenance.csv`` flags ``also_in_shared_labelled = yes``."""
    with open(provenance, newline="", encoding="utf-8") as handle:
        return {row["id"] for row in csv.DictReader(handle) if row["also_in_shared_labelled"].strip().lower() == "yes"}


def teacher_step(teacher: torch.nn.Module) -> Engine:
    """An ignite engine whose output is what ``PredictionWriter`` reads: (seg logits (B, K, S, S), no class logits (B, 0))."""

    def step(engine: Engine, batch: dict) -> dict:
        with torch.no_grad():
            logits = teacher(batch["image"])
        return {Keys.PRED: (logits, logits.new_zeros((logits.shape[0], 0)))}

    return Engine(step)


def label_folder(
    teacher: torch.nn.Module,
    source: str | Path,
    out: Path,
    overlays: Path,
    image_size: int,
    organ: str,
    object_type: str,
    skip: set[str],
    batch_size: int = 8,
) -> int:
    """Write ``out/images`` (links to the readable images of ``source`` whose stem is not in ``skip``),
    ``out/masks`` (the teacher's cleaned masks at each image's size) and ``overlays``; returns the count."""
    samples = [s for s in collect_images(input_dir=source) if stem_of(Path(s["image"])) not in skip]
    samples = readable_samples(samples)
    preprocessing = inference_transforms(image_size, organ, object_type, geometry="letterbox")
    writer = PredictionWriter(overlays, preprocessing, [], mask_postprocessing(True, True, 2))
    engine = teacher_step(teacher)
    writer.attach(engine)
    engine.run(DataLoader(Dataset(samples, preprocessing), batch_size=batch_size, shuffle=False))
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for sample in samples:
        image = Path(sample["image"]).resolve()
        stem = stem_of(image)
        link = out / "images" / image.name
        link.unlink(missing_ok=True)
        link.symlink_to(image)
        shutil.move(overlays / f"{stem}.png", out / "masks" / f"{stem}.png")
    return len(samples)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", required=True, help="a U-Net state dict (benchmarks.unet_baseline --save)")
    parser.add_argument("--image_size", type=int, default=160, help="the teacher's training input size")
    parser.add_argument(
        "--source", nargs=4, action="append", required=True, metavar=("DIR", "NAME", "ORGAN", "OBJECT_TYPE"),
        help="an unlabelled folder, the dataset name to give it and its prompts (repeatable)",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--provenance", help="leave out the ids this CSV flags also_in_shared_labelled = yes")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    teacher = build_unet(2)
    teacher.load_state_dict(torch.load(args.teacher, map_location="cpu", weights_only=True))
    teacher.eval()
    skip = flagged_ids(args.provenance) if args.provenance else set()
    registry = args.out / "datasets.yaml"
    for folder, name, organ, object_type in args.source:
        labelled = label_folder(
            teacher, folder, args.out / name, args.out / "overlays" / name, args.image_size, organ, object_type, skip
        )
        report = make_datalist(
            args.out / name,
            args.out / f"{name}.json",
            DatalistSpec(name, (SEGMENTATION,), organ, object_type, seg_classes=binary_classes(object_type)),
            registry,
            fractions=(1.0, 0.0, 0.0),
        )
        print(f"{name}: {labelled} images labelled by the teacher in {args.out / name}\n{report}")
    print(f"registry: {registry}")


if __name__ == "__main__":
    main()
