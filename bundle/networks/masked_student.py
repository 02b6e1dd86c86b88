"""PerceptGuide's encoder on its own, and the masked student of self-supervised pretraining.

The encoder here is the PerceptGuide's own patch embedding, stages and final norm (the same
module objects, not copies), so its state-dict keys are PerceptGuide's (``patch_embed.*``,
``encoder.*``, ``encoder_norm.*``) and weights learnt here initialise any later stage through
``bundle.networks.initialise_from``. Masking works on *units*: one unit is the image square a
bottleneck token sees (``patch_size · 2^(stages-1)`` pixels, 32 for the paper network, as
SimMIM masks a Swin), so the losses at masked positions line up with the deepest features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import MLPBlock
from monai.networks.layers import trunc_normal_
from monai.utils import look_up_option
from torch import nn

from bundle.networks.perceptguide import PerceptGuide

__all__ = ["HEADS", "MaskedStudent", "PerceptGuideEncoder", "image_to_units", "units_to_image"]

# recon: pixels of every unit; distill: a feature per unit; global: one pooled embedding per image
HEADS: tuple[str, ...] = ("recon", "distill", "global")


def image_to_units(image: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/stride, W/stride, C·stride²): the pixels of each unit, channel-major."""
    batch, channels, height, width = image.shape
    units = image.reshape(batch, channels, height // stride, stride, width // stride, stride)
    return units.permute(0, 2, 4, 1, 3, 5).reshape(batch, height // stride, width // stride, -1)


def units_to_image(units: torch.Tensor, channels: int) -> torch.Tensor:
    """Inverse of :func:`image_to_units`: (B, h, w, C·s²) -> (B, C, h·s, w·s)."""
    batch, height, width, size = units.shape
    stride = math.isqrt(size // channels)
    pixels = units.reshape(batch, height, width, channels, stride, stride).permute(0, 3, 1, 4, 2, 5)
    return pixels.reshape(batch, channels, height * stride, width * stride)


class PerceptGuideEncoder(nn.Module):
    """Patch embedding, encoder stages and final norm of a :class:`PerceptGuide`, shared with it.

    Args:
        network: the PerceptGuide whose modules this encoder uses (not copied).

    Attributes:
        stride: pixels per bottleneck token side (``patch_size · 2^(stages-1)``), the unit side.
        out_dim: bottleneck width (``embed_dim · 2^(stages-1)``).
    """

    def __init__(self, network: PerceptGuide) -> None:
        super().__init__()
        self.patch_embed = network.patch_embed
        self.pos_drop = network.pos_drop
        self.encoder = network.encoder
        self.encoder_norm = network.encoder_norm
        self.in_channels = network.in_channels
        self.embed_dim = int(network.arguments["embed_dim"])
        self.patch_size = int(network.arguments["patch_size"])
        self.stride = self.patch_size * 2 ** (len(network.encoder) - 1)
        self.out_dim = self.encoder_norm.normalized_shape[0]
        self.pad_multiple = network.pad_multiple

    def check_size(self, image: torch.Tensor) -> None:
        """A ValueError unless ``image`` is (B, in_channels, H, W) with H and W multiples of ``pad_multiple``."""
        if image.dim() != 4 or image.shape[1] != self.in_channels:
            raise ValueError(f"image must have shape (B, {self.in_channels}, H, W), got {tuple(image.shape)}.")
        if image.shape[2] % self.pad_multiple or image.shape[3] % self.pad_multiple:
            raise ValueError(
                f"self-supervised inputs need sides that are multiples of {self.pad_multiple} "
                f"(patch · window · 2^(stages-1)); got {tuple(image.shape[2:])}: change image_size."
            )

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> patch tokens (B, H/patch, W/patch, embed_dim)."""
        return self.patch_embed(image)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, H/patch, W/patch, embed_dim) -> normalised bottleneck (B, H/stride, W/stride, out_dim)."""
        x = self.pos_drop(tokens)
        for stage in self.encoder:
            x = stage(x)
        return self.encoder_norm(x)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> bottleneck features (B, H/stride, W/stride, out_dim)."""
        self.check_size(image)
        return self.encode(self.embed(image))


class MaskedStudent(nn.Module):
    """The student: PerceptGuide's encoder on images whose masked units' patch tokens are replaced
    by a learnt mask token, and one light head per loss term.

    Heads, on the bottleneck features ``f`` (B, h, w, D):

    - ``recon``: Linear(D, C_in·stride²), the pixels of each unit (SimMIM's one-layer head;
      :func:`units_to_image` is its pixel shuffle).
    - ``distill``: an MLP D -> 2D -> D per unit, to match the teacher's features.
    - ``global``: the same MLP on the mean of ``f`` over the units, one embedding per image.

    Args:
        network: the PerceptGuide to pretrain; only its encoder is used and trained.
        heads: the heads to build (a subset of ``HEADS``); a term switched off has no head.
    """

    def __init__(self, network: PerceptGuide, heads: Sequence[str] = HEADS) -> None:
        super().__init__()
        self.heads = tuple(look_up_option(head, HEADS) for head in heads)
        self.encoder = PerceptGuideEncoder(network)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, self.encoder.embed_dim))
        trunc_normal_(self.mask_token, std=0.02)
        dim = self.encoder.out_dim
        self.recon_head = nn.Linear(dim, self.encoder.in_channels * self.encoder.stride**2) if "recon" in self.heads else None
        self.distill_head = MLPBlock(dim, 2 * dim) if "distill" in self.heads else None
        self.global_head = MLPBlock(dim, 2 * dim) if "global" in self.heads else None

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            image: (B, C_in, H, W), H and W multiples of the encoder's ``pad_multiple``.
            mask: (B, H/stride, W/stride) bool, True where a unit is masked.

        Returns:
            per head built: ``recon`` (B, h, w, C_in·stride²), ``distill`` (B, h, w, D),
            ``global`` (B, D), with (h, w) = (H/stride, W/stride).
        """
        self.encoder.check_size(image)
        stride = self.encoder.stride
        if tuple(mask.shape) != (image.shape[0], image.shape[2] // stride, image.shape[3] // stride):
            raise ValueError(f"mask {tuple(mask.shape)} does not fit the {stride}-pixel units of image {tuple(image.shape)}.")
        tokens = self.encoder.embed(image)
        scale = stride // self.encoder.patch_size
        hidden = mask.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2).unsqueeze(-1)
        features = self.encoder.encode(torch.where(hidden, self.mask_token.to(tokens.dtype), tokens))
        outputs = {}
        if self.recon_head is not None:
            outputs["recon"] = self.recon_head(features)
        if self.distill_head is not None:
            outputs["distill"] = self.distill_head(features)
        if self.global_head is not None:
            outputs["global"] = self.global_head(features.mean(dim=(1, 2)))
        return outputs
