"""Time the training data chain against the same chain built from MONAI's traced transforms.

One run, alternating the two chains over whole epochs of the demo training split (the decoded
images cached as in ``configs/pretrain.yaml``, the random part timed), and prints the median
seconds per epoch and their ratio:

- ``bundle``: ``bundle.transforms.train_transforms`` (plain tensors after loading; torch's
  anti-aliased resize; the official flip / rotate / zoom cascade and centre crop as one
  ``grid_sample``; the prompt-mode crop as a slice);
- ``monai``: the same steps with MONAI's traced transforms: the prompt-mode crop by MONAI
  ``Crop``, ``ShortSideResized`` (MONAI's anti-aliased resize), a ``OneOf`` of ``Flipd`` /
  ``RandRotated`` / ``RandZoomd`` / ``Identityd`` with the official weights and a
  ``CenterSpatialCropd`` (the bundle's earlier chain).

Usage::

    python -m benchmarks.benchmark_data [--image_size 96] [--threads 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from monai.data import CacheDataset
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    Flipd,
    Identityd,
    OneOf,
    RandRotated,
    RandZoomd,
)

from benchmarks import DEMO_DATA
from bundle.data import load_registry, load_samples
from bundle.transforms import (
    PromptModed,
    RandOfficialCascaded,
    RandPromptModed,
    ShortSideInterpolated,
    ShortSideResized,
    train_transforms,
    verify_samples,
)

DEMO_REGISTRY = DEMO_DATA / "datasets.yaml"
KEYS = ("image", "label")
# the CPU recipe's input modes (configs/cpu.yaml)
CPU_MODES = {"segmentation": {"whole": 0.8, "local": 0.2}}


class TracedRandPromptModed(RandPromptModed):
    """``RandPromptModed`` cropping with MONAI's traced ``Crop`` (``PromptModed``'s crop)."""

    crop = PromptModed.crop


def monai_cascade(image_size: int) -> list:
    """The official cascade and centre crop as MONAI transforms (flip 1/2, rotate 1/4, zoom 1/8, none 1/8)."""
    return [
        OneOf(
            [
                Flipd(KEYS, spatial_axis=1, allow_missing_keys=True),
                RandRotated(
                    KEYS, range_x=math.radians(20.0), prob=1.0, mode=("bilinear", "nearest"), padding_mode="zeros",
                    allow_missing_keys=True,
                ),
                RandZoomd(
                    KEYS, prob=1.0, min_zoom=0.8, max_zoom=1.2, mode=("bilinear", "nearest-exact"),
                    padding_mode="constant", allow_missing_keys=True,
                ),
                Identityd(KEYS, allow_missing_keys=True),
            ],
            weights=(0.5, 0.25, 0.125, 0.125),
        ),
        CenterSpatialCropd(KEYS, (image_size, image_size), allow_missing_keys=True),
    ]


def monai_chain(bundle_chain: Compose, image_size: int) -> Compose:
    """``bundle_chain`` with its plain-tensor steps swapped for MONAI's traced ones."""
    steps = []
    for step in bundle_chain.transforms:
        if isinstance(step, RandPromptModed):
            steps.append(TracedRandPromptModed(CPU_MODES))
        elif isinstance(step, ShortSideInterpolated):
            steps.append(ShortSideResized(KEYS, image_size))
        elif isinstance(step, RandOfficialCascaded):
            steps.extend(monai_cascade(image_size))
        else:
            steps.append(step)
    return Compose(steps)


def epoch_seconds(dataset: CacheDataset) -> float:
    """Seconds to draw every sample of ``dataset`` once."""
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="epochs per chain, alternating")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    registry = load_registry(DEMO_REGISTRY)
    samples = verify_samples(load_samples(registry, "train", None), registry)
    chain = train_transforms(args.image_size, registry, CPU_MODES)
    datasets = {
        "bundle": CacheDataset(samples, chain, progress=False),
        "monai": CacheDataset(samples, monai_chain(chain, args.image_size), progress=False),
    }
    times: dict[str, list[float]] = {name: [] for name in datasets}
    for _ in range(args.rounds):
        for name, dataset in datasets.items():
            times[name].append(epoch_seconds(dataset))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"training data chain, {len(samples)} samples at {args.image_size}², {args.threads} threads, "
          f"median of {args.rounds} epochs")
    print("| chain | s per epoch | ms per sample |")
    print("|---|---:|---:|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.2f} | {1000 * seconds / len(samples):.2f} |")
    print(f"monai / bundle: {medians['monai'] / medians['bundle']:.2f}x")


if __name__ == "__main__":
    main()
