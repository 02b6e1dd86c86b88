"""Convolutional parts: options that give the small CPU network local priors.

The official network embeds 4×4 patches with one linear projection, so nothing in it looks at
neighbouring pixels below the token scale. Trained from scratch on a few hundred images (the CPU
demo), it fits its training thyroid videos and predicts a blob in the middle of new ones. A
strided convolution stem (Xiao et al., "Early convolutions help transformers see better",
NeurIPS 2021) is the usual remedy; it is an option of :class:`~bundle.networks.PerceptGuide`
(``patch_embed="conv"``, configs/cpu.yaml), off by default so official checkpoints keep loading.
Measured on the demo (docs/results.md), it raised test thyroid Dice from 0.18–0.23 to 0.35–0.43.

:class:`ConvSkipPath` is the other option (``conv_skips``, off by default): convolutional skip
blocks on the image at the resolutions finer than the Swin tokens, as MONAI's SwinUNETR has
beside its Swin encoder, and prompted up-blocks that bring the segmentation decoder's features
back to the input resolution through them.
"""

from __future__ import annotations

import math

from collections.abc import Mapping, Sequence

import torch
from monai.networks.blocks import Convolution, UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from torch import nn
from torch.nn import functional as F

__all__ = ["ConvPatchEmbedding", "ConvSkipPath", "PromptedUpBlock"]


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


class PromptedUpBlock(nn.Module):
    """MONAI ``UnetrUpBlock`` (×2 transposed convolution, skip concat, residual block) with a prompt gain.

    The prompts scale each output channel: ``block(x, skip) · (1 + prompt_proj(p))``, ``p`` the
    concatenated one-hot prompts, as the hyper-perception steers every Swin decoder block. The
    gain's Linear is named ``prompt_proj`` so that sync (:mod:`bundle.workflows.sync`) trains it
    with the Swin blocks' prompt projections; zero-initialised (:meth:`reset_prompt_gain`), the
    block starts neutral.

    Args:
        in_channels: channels of the coarser input x.
        out_channels: channels of the skip and of the output.
        prompt_features: length of the concatenated one-hot prompts; 0 builds no gain.
    """

    def __init__(self, in_channels: int, out_channels: int, prompt_features: int) -> None:
        super().__init__()
        self.block = UnetrUpBlock(
            2, in_channels, out_channels, kernel_size=3, upsample_kernel_size=2, norm_name="instance", res_block=True
        )
        self.prompt_proj = nn.Linear(prompt_features, out_channels) if prompt_features else None
        self.reset_prompt_gain()

    def reset_prompt_gain(self) -> None:
        """Zero gain: the block's output is not scaled until the gain learns."""
        if self.prompt_proj is not None:
            nn.init.zeros_(self.prompt_proj.weight)
            nn.init.zeros_(self.prompt_proj.bias)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, prompts: Sequence[torch.Tensor] | None) -> torch.Tensor:
        """
        Args:
            x: (B, in_channels, h, w).
            skip: (B, out_channels, 2h, 2w).
            prompts: the one-hot prompts (B, n_k) in the order of ``prompt_proj``'s input columns,
                or None without a gain.

        Returns:
            (B, out_channels, 2h, 2w).
        """
        out = self.block(x, skip)
        if self.prompt_proj is None:
            return out
        return out * (1 + self.prompt_gain(prompts))[:, :, None, None]

    def prompt_gain(self, prompts: Sequence[torch.Tensor]) -> torch.Tensor:
        """``prompt_proj`` of the concatenated prompts (B, out_channels), one prompt's columns at a time.

        Summed per prompt in a fixed order, each term is one weight column, exactly: the result does
        not depend on how many columns the other prompts have, so an organ vocabulary grown by a
        column (:mod:`bundle.networks.vocabulary_growth`) leaves every old organ's output bit-identical.
        """
        gain = self.prompt_proj.bias
        start = 0
        for prompt in prompts:
            end = start + prompt.shape[1]
            gain = gain + F.linear(prompt, self.prompt_proj.weight[:, start:end])
            start = end
        if start != self.prompt_proj.in_features:
            raise ValueError(f"the prompts have {start} columns, the prompt gain takes {self.prompt_proj.in_features}")
        return gain


class ConvSkipPath(nn.Module):
    """SwinUNETR-style convolutional segmentation head: image skips at 1, 1/2, … and prompted up-blocks.

    ``log2(patch_size)`` MONAI ``UnetrBasicBlock``s (instance norm, residual) encode the image:
    the first at full resolution, each next one with stride 2, down to 2× the token size. From
    the segmentation decoder's normalised features at the token resolution (1/patch_size), as
    many :class:`PromptedUpBlock`s double the resolution, each concatenating the skip of its
    resolution, and a MONAI ``UnetOutBlock`` (1×1 convolution) gives the logits.

    Args:
        in_channels: image channels.
        token_dim: channels C of the decoder's features (the network's ``embed_dim``).
        width: channels of every skip and up-block.
        out_channels: segmentation classes.
        patch_size: the tokens' stride, a power of 2 (at least 2).
        prompt_sizes: one-hot length per prompt key, in the order the prompts are concatenated;
            empty for a network without prompts (no gains).
    """

    def __init__(
        self,
        in_channels: int,
        token_dim: int,
        width: int,
        out_channels: int,
        patch_size: int,
        prompt_sizes: Mapping[str, int],
    ) -> None:
        super().__init__()
        steps = int(math.log2(patch_size))
        if patch_size < 2 or 2**steps != patch_size:
            raise ValueError(f"a convolutional skip path needs a patch size that is a power of 2, got {patch_size}.")
        if width < 1:
            raise ValueError(f"the convolutional skip path needs a width >= 1, got {width}.")
        self.keys_in_order = tuple(prompt_sizes)
        self.encoders = nn.ModuleList(
            UnetrBasicBlock(
                2, in_channels if step == 0 else width, width, kernel_size=3, stride=1 if step == 0 else 2,
                norm_name="instance", res_block=True,
            )  # fmt: skip
            for step in range(steps)
        )
        prompt_features = sum(prompt_sizes.values())
        self.up = nn.ModuleList(
            PromptedUpBlock(token_dim if step == 0 else width, width, prompt_features) for step in range(steps)
        )
        self.out = UnetOutBlock(2, width, out_channels)

    def forward(
        self, image: torch.Tensor, tokens: torch.Tensor, prompts: Mapping[str, torch.Tensor] | None
    ) -> torch.Tensor:
        """
        Args:
            image: (B, in_channels, H, W), H and W multiples of patch_size.
            tokens: the segmentation decoder's features (B, H/patch, W/patch, token_dim), channels last.
            prompts: one-hot prompts {key: (B, n_k)}, or None for a network without prompts.

        Returns:
            seg logits (B, out_channels, H, W).
        """
        skips = []
        x = image
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        ordered = [prompts[key] for key in self.keys_in_order] if self.keys_in_order else None
        x = tokens.permute(0, 3, 1, 2)
        for up, skip in zip(self.up, reversed(skips)):
            x = up(x, skip, ordered)
        return self.out(x)
