"""Shared by the tests of bundle/label: a small network setting and untrained checkpoints of it.

A small network at a small input keeps inference and training inside the tests' budget on
2 CPU cores; the setting is a real config override file, given to the bundle's configs exactly
as a user gives ``configs/cpu.yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import yaml
from monai.bundle import ConfigParser

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL_NET = {
    "image_size": 64,
    "network_def#embed_dim": 12,
    "network_def#encoder_depths": [1, 1],
    "network_def#decoder_depths": [1, 1],
    "network_def#num_heads": [1, 2],
    # pinned, so the tests do not follow the CPU setting's window and recipe as they are tuned:
    # the label tests fine-tune an untrained network on 6 images for 20 epochs, where the demo's
    # recipe (lr 2e-4 at the time, from scratch, 80 epochs on 250 images) is still in its all-background phase
    "network_def#window_size": 4,
    # the 20-epoch fit gained 0.024 Dice with the CPU setting's convolution stem, 0.03+ with this one
    "network_def#patch_embed": "linear",
    "learning_rate": 1.0e-3,
    "warmup_epochs": 4,
    "lr_decay": "poly",
    "official_dice": True,
    "mode_probabilities": None,
}


def small_net_overrides(folder: Path) -> list[Path]:
    """Override files for the small network on top of the CPU setting: ``[cpu.yaml, small_net.yaml]``."""
    small = folder / "small_net.yaml"
    small.write_text(yaml.safe_dump(SMALL_NET))
    return [REPO_ROOT / "configs" / "cpu.yaml", small]


def write_checkpoint(overrides: Sequence[Path], path: Path, seed: int, prompt_scale: float = 1.0) -> Path:
    """An untrained checkpoint of the inference config's network under ``overrides``.

    ``prompt_scale`` multiplies the prompt projections, so that prompts visibly change an
    untrained network's output.
    """
    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "configs" / "inference.yaml"), *map(str, overrides)])
    parser["bundle_root"] = str(REPO_ROOT)
    torch.manual_seed(seed)
    state = parser.get_parsed_content("network_def").state_dict()
    torch.save({k: v * prompt_scale if ".prompt_proj." in k else v for k, v in state.items()}, path)
    return path
