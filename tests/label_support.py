"""Shared by the tests of the MONAI Label app (apps/monailabel): demo images and served checkpoints.

The served checkpoints are untrained self-describing checkpoints of the tiny test network
(``tests.conftest``), so inference and training stay inside the tests' budget on 2 CPU cores
and nothing but the checkpoint says what network to build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bundle.workflows.sync import PROMPT_PARAMETER_TAG
from tests.conftest import DEMO_DIR, tiny_network, write_checkpoint

HEADS = DEMO_DIR / "segmentation" / "Fetal_HC"


def head_images(count: int) -> list[Path]:
    """The first ``count`` Fetal_HC demo images (their masks: ``HEADS / "masks" / image.name``)."""
    return sorted((HEADS / "imgs").glob("*.png"))[:count]


def served_checkpoint(
    path: Path, seed: int = 0, prompt_scale: float = 1.0, network_options: dict[str, Any] | None = None, **names: Any
) -> Path:
    """An untrained checkpoint of the tiny network, seeded, written at ``path``.

    Args:
        prompt_scale: multiplies the prompt projection weights, so that prompts visibly change
            an untrained network's output (its prompt term is ~1e-7 otherwise).
        network_options: options of the tiny network (``seg_classes``, ``prompt_sizes``...).
        names: what the checkpoint states (``vocabulary``, ``seg_classes``, ``cls_classes``
            of :func:`tests.conftest.write_checkpoint`).
    """
    network = tiny_network(seed, **(network_options or {}))
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if PROMPT_PARAMETER_TAG in name and name.endswith(".weight"):
                parameter.mul_(prompt_scale)
    return write_checkpoint(path, network, **names)
