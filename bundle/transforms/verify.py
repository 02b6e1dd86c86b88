"""Read every file of a sample list once, so bad data stops a run before training starts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from bundle.data.registry import DatasetRegistry, as_registry
from bundle.transforms.builders import load_transforms


def verify_samples(samples: Sequence[dict], registry: DatasetRegistry | str | Path) -> list[dict]:
    """Load every image and mask of ``samples`` as training would, and return the samples unchanged.

    Raises the loaders' errors, each naming its file: unreadable or corrupt image, mask of
    another size than its image, mask value the dataset does not declare. Config use:
    ``"$bundle.transforms.verify_samples(@train#datalist, @registry)"``.
    """
    steps = load_transforms(as_registry(registry))
    threads = torch.get_num_threads()
    # one image at a time is too small to split across threads: on a busy machine the extra
    # intra-op threads only contend (measured 20x slower with 2 threads on 2 loaded cores)
    torch.set_num_threads(1)
    try:
        for sample in samples:
            data = sample
            for step in steps:  # called directly: Compose would wrap the error in its own message
                data = step(data)
    finally:
        torch.set_num_threads(threads)
    return list(samples)
