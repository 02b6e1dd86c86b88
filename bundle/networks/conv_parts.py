"""Convolutional stem: an option that gives the small CPU network local priors.

The official network embeds 4×4 patches with one linear projection, so nothing in it looks at
neighbouring pixels below the token scale. Trained from scratch on a few hundred images (the CPU
demo), it fits its training thyroid videos and predicts a blob in the middle of new ones. A
strided convolution stem (Xiao et al., "Early convolutions help transformers see better",
NeurIPS 2021) is the usual remedy; it is an option of :class:`~bundle.networks.PerceptGuide`
(``patch_embed="conv"``, configs/cpu.yaml), off by default so official checkpoints keep loading.
Measured on the demo (docs/results.md), it raised test thyroid Dice from 0.18–0.23 to 0.35–0.43.
"""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["ConvPatchEmbedding"]


class ConvPatchEmbedding(nn.Module):
    """Stride-2 3×3 convolutions (batch norm, ReLU) down to 1/patch, a 1×1 projection and LayerNorm.

    Widths double per convolution and end at ``embed_dim``; the output matches
    :class:`~bundle.networks.swin_blocks.PatchEmbedding` (channels-last tokens).

    Args:
        patch_size: total stride, a power of 2 (at least 2).
        in_channels: image channels.
        embed_dim: token width C.
    """

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        steps = int(math.log2(patch_size))
        if patch_size < 2 or 2**steps != patch_size:
            raise ValueError(f"a convolution stem needs a patch size that is a power of 2, got {patch_size}.")
        widths = [max(embed_dim // 2 ** (steps - 1 - i), 1) for i in range(steps)]
        layers, channels = [], in_channels
        for width in widths:
            layers.append(Convolution(2, channels, width, strides=2, kernel_size=3, norm="batch", act="relu"))
            channels = width
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, embed_dim, kernel_size=1)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, H/patch, W/patch, embed_dim)."""
        return self.norm(self.proj(self.convs(image)).permute(0, 2, 3, 1))
