"""PerceptGuide: a 2D Swin-Unet with a segmentation and a classification decoder, prompt-guided.

Lin et al., "An orchestration learning framework for ultrasound imaging: prompt-guided
hyper-perception and attention-matching downstream synchronization", MedIA 2025.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers import trunc_normal_
from monai.networks.nets.swin_unetr import PatchMergingV2
from monai.utils import look_up_option
from torch import nn

from bundle.networks.conv_parts import ConvPatchEmbedding, ConvSkipPath, PromptedUpBlock
from bundle.networks.swin_blocks import (
    ATTENTION_IMPLS,
    DEFAULT_CACHE_BLOCK_BYTES,
    ChannelHalving,
    PatchEmbedding,
    PatchExpanding,
    PromptProjection,
    SwinStage,
    WindowAttention,
)
from bundle.prompts import DEFAULT_VOCABULARY, PROMPT_KEYS

PROMPT_INITS = ("official", "unit")
PATCH_EMBEDDINGS = {"linear": PatchEmbedding, "conv": ConvPatchEmbedding}

__all__ = ["EncodedImage", "PerceptGuide"]


@dataclass
class EncodedImage:
    """What the encoder makes of a batch, for the decoders.

    Args:
        image: the input padded to the network's multiple (B, C, H', W').
        bottleneck: the normalised deepest tokens (B, h, w, C·2^(L-1)), channels last.
        skips: each encoder stage's input tokens, finest first.
        prompts: the checked one-hot prompts {key: (B, n_k)}, or None without prompts.
        size: (H, W) of the input before padding.
    """

    image: torch.Tensor
    bottleneck: torch.Tensor
    skips: list[torch.Tensor]
    prompts: dict[str, torch.Tensor] | None
    size: tuple[int, int]


def _drop_path_rates(depths: Sequence[int], rate: float) -> list[list[float]]:
    """Stochastic depth rising linearly over all blocks of ``depths``, split per stage."""
    rates = torch.linspace(0, rate, sum(depths)).tolist()
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[start : start + depth] for start, depth in zip(starts, depths)]


@dataclass(frozen=True)
class StagePlan:
    """Widths, depths, heads, drop path and map sizes of a stack of Swin stages, level 0 the finest.

    Args:
        embed_dim: C; level l is 2^l·C wide.
        depths: blocks per level.
        num_heads: heads per level.
        drop_path: stochastic depth rates per level (one per block).
        grid: (H, W) of the level-0 map at the network's nominal input size; level l has
            ``grid / 2^l``.
        cache_block_bytes: see :class:`~bundle.networks.swin_blocks.SwinBlock`.
        onednn_linear: see :class:`~bundle.networks.swin_blocks.WindowAttention`.
        stage_kwargs: the remaining :class:`SwinStage` arguments shared by all stages.
    """

    embed_dim: int
    depths: Sequence[int]
    num_heads: Sequence[int]
    drop_path: Sequence[Sequence[float]]
    grid: tuple[int, int]
    cache_block_bytes: int = DEFAULT_CACHE_BLOCK_BYTES
    onednn_linear: bool = True
    stage_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def levels(self) -> int:
        return len(self.depths)

    def width(self, level: int) -> int:
        return self.embed_dim * 2**level

    def stage(self, level: int, resample: nn.Module | None, map_level: int | None = None) -> SwinStage:
        """The stage of ``level`` (width, depth, heads), on the map of ``map_level`` (default: ``level``)."""
        scale = 2 ** (level if map_level is None else map_level)
        return SwinStage(
            self.width(level),
            self.depths[level],
            self.num_heads[level],
            drop_path=self.drop_path[level],
            resample=resample,
            resolution=(self.grid[0] // scale, self.grid[1] // scale),
            cache_block_bytes=self.cache_block_bytes,
            onednn_linear=self.onednn_linear,
            **self.stage_kwargs,
        )


class SegmentationDecoder(nn.Module):
    """Swin-Unet decoder: patch expanding per stage, skip concat + Linear, prompted blocks, ×4 head.

    Args:
        plan: the decoder's levels (depths, heads, map sizes, block options).
        seg_classes: output channels.
        patch_size: the final expansion factor (back to the input resolution).
        fused_head: apply the 1×1 output convolution before the final depth-to-space (same
            numbers, far less memory traffic); False keeps the official order.
        head: build the final ×4 expansion and the 1×1 output convolution; False when a
            :class:`~bundle.networks.conv_parts.ConvSkipPath` takes :meth:`features` to the
            input resolution instead (:meth:`forward` then has no head to run).
    """

    def __init__(
        self, plan: StagePlan, seg_classes: int, patch_size: int, fused_head: bool = True, head: bool = True
    ) -> None:
        super().__init__()
        self.fused_head = fused_head
        bottleneck_dim = plan.width(plan.levels - 1)
        self.expand_bottleneck = PatchExpanding(bottleneck_dim, bottleneck_dim // 2)
        self.fuse = nn.ModuleList()
        self.stages = nn.ModuleList()
        for level in reversed(range(plan.levels - 1)):
            dim = plan.width(level)
            self.fuse.append(nn.Linear(2 * dim, dim))
            self.stages.append(plan.stage(level, resample=PatchExpanding(dim, dim // 2) if level > 0 else None))
        self.norm = nn.LayerNorm(plan.embed_dim)
        if not head:
            return
        self.final_expand = PatchExpanding(
            plan.embed_dim,
            plan.embed_dim,
            scale=patch_size,
            cache_block_bytes=plan.cache_block_bytes,
            onednn_linear=plan.onednn_linear,
        )
        self.out = nn.Conv2d(plan.embed_dim, seg_classes, kernel_size=1, bias=False)

    def features(
        self, bottleneck: torch.Tensor, skips: Sequence[torch.Tensor], prompts: Mapping[str, torch.Tensor] | None
    ) -> torch.Tensor:
        """
        Args:
            bottleneck: (B, h, w, 2^(L-1)·C) normalised encoder output.
            skips: encoder stage inputs, finest first: (B, 2^(L-1-i)·h, …, 2^i·C).
            prompts: one-hot prompts {key: (B, n_k)} or None.

        Returns:
            normalised features at the token resolution (B, 2^(L-1)·h, 2^(L-1)·w, C).
        """
        x = self.expand_bottleneck(bottleneck)
        for fuse, stage, skip in zip(self.fuse, self.stages, reversed(skips[:-1])):
            x = stage(fuse(torch.cat([x, skip], dim=-1)), prompts)
        return self.norm(x)

    def forward(
        self, bottleneck: torch.Tensor, skips: Sequence[torch.Tensor], prompts: Mapping[str, torch.Tensor] | None
    ) -> torch.Tensor:
        """Same inputs as :meth:`features`; returns seg logits (B, seg_classes, patch·2^(L-1)·h, patch·2^(L-1)·w)."""
        x = self.features(bottleneck, skips, prompts)
        if self.fused_head:
            return self.final_expand.project(x, self.out.weight.flatten(1))
        return self.out(self.final_expand(x).permute(0, 3, 1, 2))


class ClassificationDecoder(nn.Module):
    """Classification decoder: stages at the bottleneck resolution fed by average-pooled skips.

    Args:
        plan: the decoder's levels; levels L-1 … 1 are used, all on the bottleneck's map.
        cls_classes: output classes.
    """

    def __init__(self, plan: StagePlan, cls_classes: int) -> None:
        super().__init__()
        self.fuse = nn.ModuleList()
        self.stages = nn.ModuleList()
        for level in reversed(range(1, plan.levels)):
            dim = plan.width(level)
            # the pooled skip entering this stage has half its width
            self.fuse.append(nn.Linear(dim + dim // 2, dim))
            resample = ChannelHalving(dim) if level > 1 else None
            self.stages.append(plan.stage(level, resample=resample, map_level=plan.levels - 1))
        self.norm = nn.LayerNorm(plan.width(1))
        self.head = nn.Linear(plan.width(1), cls_classes)

    def forward(
        self, bottleneck: torch.Tensor, skips: Sequence[torch.Tensor], prompts: Mapping[str, torch.Tensor] | None
    ) -> torch.Tensor:
        """Same inputs as :meth:`SegmentationDecoder.forward`; returns cls logits (B, cls_classes)."""
        x = bottleneck
        size = (int(bottleneck.shape[1]), int(bottleneck.shape[2]))  # constants in an exported graph, whose batch may vary
        for fuse, stage, skip in zip(self.fuse, self.stages, reversed(skips[:-1])):
            pooled = F.adaptive_avg_pool2d(skip.permute(0, 3, 1, 2), size).permute(0, 2, 3, 1)
            x = stage(fuse(torch.cat([x, pooled], dim=-1)), prompts)
        return self.head(self.norm(x).mean(dim=(1, 2)))


class PerceptGuide(nn.Module):
    """PerceptGuide network: Swin encoder, prompted segmentation and classification decoders.

    Args:
        img_size: nominal (training) input side, whose window geometry (shift masks, token index
            maps) every block builds with the network; inputs of any size are accepted (their
            geometry is built on first use) and padded internally to a multiple of
            ``patch_size · window_size · 2^(stages-1)``.
        in_channels: image channels.
        embed_dim: C, width of the first stage (96 in the paper).
        encoder_depths: Swin blocks per encoder stage.
        decoder_depths: Swin blocks per decoder level (level 0 = finest), shared by both decoders.
        num_heads: attention heads per level.
        window_size: attention window side.
        mlp_ratio: MLP hidden width / C.
        seg_classes: segmentation output channels.
        cls_classes: classification outputs.
        prompt: build the four prompt projections and hyper vectors in every decoder block.
        prompt_sizes: one-hot length per prompt key; defaults to the official vocabularies
            (position 11, task 2, mode 3, type 2). Grow ``position`` to add organs.
        patch_size: patch embedding stride.
        qkv_bias: bias in the qkv projections.
        drop_rate: dropout after attention projections and in MLPs.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: maximum stochastic depth rate (0.2 for paper training).
        attention_impl: ``"fast"`` (this bundle's optimised path) or ``"reference"`` (the official
            order of operations and explicit ``q W kᵀ`` attention math; a baseline for tests and
            benchmarks). Same weights, same outputs within float rounding.
        official_batch_prompt_bug: reproduce the official batch prompt mixing (window i gets the
            prompts of sample i % B); only for parity with official results.
        use_checkpoint: activation checkpointing per Swin block (less memory, slower training).
        prompt_init: ``"official"``: prompt projections initialised like every Linear (weights
            N(0, 0.02), zero bias) and hyper vectors uniform in [0, 1). The prompt term is then a
            product of four ~0.02 projections, ~1e-7: at the start of training every decoder
            attention is a plain window average and the prompts barely reach the outputs.
            ``"unit"``: projection biases and hyper vectors at 1, so each block starts from
            prompt factors near 1 (fitting 48 demo images, loss 0.10 vs 0.14 after 200 steps).
            Only changes the initial values; checkpoints load either way.
        patch_embed: ``"linear"`` (official: one strided projection of each patch) or ``"conv"``
            (:class:`~bundle.networks.conv_parts.ConvPatchEmbedding`, stride-2 3×3 convolutions,
            for small networks trained from scratch; official checkpoints need ``"linear"``).
        onednn_linear: run the fast path's Linear layers through oneDNN's inner product where
            :func:`bundle.networks.dense.linear` allows it (fp32 CPU forwards without autograd,
            autocast, compile, tracing or export, on a PyTorch build that has it); False keeps
            ``F.linear``. Same numbers within float rounding.
        cache_block_bytes: in inference, the MLPs and the seg head of the fast path run over
            blocks of tokens whose widest intermediate has about this many bytes, so that it
            stays in cache; a value above a whole map's keeps every map in one piece. Same numbers.
        conv_skips: width of a SwinUNETR-style convolutional skip path
            (:class:`~bundle.networks.conv_parts.ConvSkipPath`, state-dict keys ``conv_skips.*``):
            convolutional blocks on the image at full and half resolution, and prompted up-blocks
            that take the segmentation decoder's features from the token resolution to the input
            through them, in place of the final ×4 expansion and 1×1 head. Each up-block's output
            channels are scaled by ``1 + Linear(prompts)`` (zero-initialised; trained by sync).
            0 (default): no such path, the official network.

    Example::

        net = PerceptGuide(embed_dim=24)
        prompts = DEFAULT_VOCABULARY.encode({"position": "breast", "task": "segmentation",
                                             "mode": "whole", "type": "tumor"})
        seg, cls = net(torch.rand(1, 3, 224, 224), prompts)  # (1, 2, 224, 224), (1, 2)
    """

    def __init__(
        self,
        img_size: int = 224,
        in_channels: int = 3,
        embed_dim: int = 96,
        encoder_depths: Sequence[int] = (4, 4, 4, 4),
        decoder_depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        seg_classes: int = 2,
        cls_classes: int = 2,
        prompt: bool = True,
        prompt_sizes: Mapping[str, int] | None = None,
        patch_size: int = 4,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        attention_impl: str = "fast",
        official_batch_prompt_bug: bool = False,
        use_checkpoint: bool = False,
        prompt_init: str = "official",
        patch_embed: str = "linear",
        onednn_linear: bool = True,
        cache_block_bytes: int = DEFAULT_CACHE_BLOCK_BYTES,
        conv_skips: int = 0,
    ) -> None:
        super().__init__()
        # the constructor arguments, which a self-describing checkpoint stores to rebuild this network
        self.arguments = {name: value for name, value in locals().items() if name not in ("self", "__class__")}
        prompt_init = look_up_option(prompt_init, PROMPT_INITS)
        embedding_class = look_up_option(patch_embed, PATCH_EMBEDDINGS)
        attention_impl = look_up_option(attention_impl, ATTENTION_IMPLS)
        levels = len(encoder_depths)
        if levels < 2 or not len(decoder_depths) == len(num_heads) == levels:
            raise ValueError(
                "encoder_depths, decoder_depths and num_heads need one entry per stage (at least 2), got "
                f"{list(encoder_depths)}, {list(decoder_depths)}, {list(num_heads)}."
            )
        for level, heads in enumerate(num_heads):
            if (embed_dim * 2**level) % heads:
                raise ValueError(f"stage {level} width {embed_dim * 2**level} is not divisible by {heads} heads.")
        if seg_classes < 1 or cls_classes < 1:
            raise ValueError(f"seg_classes and cls_classes must be >= 1, got {seg_classes} and {cls_classes}.")
        if cache_block_bytes < 1:
            raise ValueError(f"cache_block_bytes must be >= 1, got {cache_block_bytes}.")
        if conv_skips < 0:
            raise ValueError(f"conv_skips must be >= 0 (0: no convolutional skip path), got {conv_skips}.")
        sizes = dict(DEFAULT_VOCABULARY.sizes if prompt_sizes is None else prompt_sizes)
        if prompt and sorted(sizes) != sorted(PROMPT_KEYS):
            raise ValueError(f"prompt_sizes needs exactly the keys {list(PROMPT_KEYS)}, got {sorted(sizes)}.")
        self.img_size = img_size
        self.in_channels = in_channels
        self.prompt = prompt
        self.prompt_sizes = sizes if prompt else {}
        self.pad_multiple = patch_size * window_size * 2 ** (levels - 1)
        # the level-0 map of a nominal input, padded as forward pads it
        side = -(-img_size // self.pad_multiple) * self.pad_multiple // patch_size

        common = {
            "window_size": window_size,
            "mlp_ratio": mlp_ratio,
            "qkv_bias": qkv_bias,
            "drop": drop_rate,
            "attn_drop": attn_drop_rate,
            "attention_impl": attention_impl,
            "use_checkpoint": use_checkpoint,
        }
        self.patch_embed = embedding_class(patch_size, in_channels, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        encoder = StagePlan(
            embed_dim,
            encoder_depths,
            num_heads,
            _drop_path_rates(encoder_depths, drop_path_rate),
            grid=(side, side),
            cache_block_bytes=cache_block_bytes,
            onednn_linear=onednn_linear,
            stage_kwargs=common,
        )
        self.encoder = nn.ModuleList(
            encoder.stage(level, PatchMergingV2(encoder.width(level), spatial_dims=2) if level < levels - 1 else None)
            for level in range(levels)
        )
        self.encoder_norm = nn.LayerNorm(encoder.width(levels - 1))

        decoder = replace(
            encoder,
            depths=decoder_depths,
            drop_path=_drop_path_rates(decoder_depths, drop_path_rate),
            stage_kwargs=dict(
                common, prompt_sizes=self.prompt_sizes or None, official_batch_prompt_bug=official_batch_prompt_bug
            ),
        )
        self.seg_decoder = SegmentationDecoder(
            decoder, seg_classes, patch_size, fused_head=attention_impl == "fast", head=not conv_skips
        )
        self.cls_decoder = ClassificationDecoder(decoder, cls_classes)
        self.conv_skips = (
            ConvSkipPath(in_channels, embed_dim, conv_skips, seg_classes, patch_size, self.prompt_sizes)
            if conv_skips
            else None
        )
        self.initialise(self)

    def initialise(self, module: nn.Module) -> nn.Module:
        """Draw initial weights for ``module`` (this network, or a copy of one of its parts) by this
        network's scheme: the official init, neutral prompt gains, and ``prompt_init``."""
        module.apply(self._init_weights)
        # the official init above reaches the prompt gains' Linear layers too: they start neutral again
        module.apply(self._neutral_prompt_gain_init)
        if self.arguments["prompt_init"] == "unit":
            module.apply(self._unit_prompt_init)
        return module

    @staticmethod
    def _neutral_prompt_gain_init(module: nn.Module) -> None:
        """Zero prompt gains in the convolutional skip path's up-blocks."""
        if isinstance(module, PromptedUpBlock):
            module.reset_prompt_gain()

    @staticmethod
    def _unit_prompt_init(module: nn.Module) -> None:
        """Prompt factors near 1: projection biases and hyper vectors set to 1."""
        if isinstance(module, PromptProjection):
            for projection in module.values():
                nn.init.ones_(projection.bias)
        elif isinstance(module, WindowAttention):
            for vector in module.hyper.values():
                nn.init.ones_(vector)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """Official init: truncated normal Linear weights, zero biases, unit LayerNorms."""
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _check_prompts(self, prompts: Mapping[str, torch.Tensor] | None, batch: int) -> dict[str, torch.Tensor] | None:
        """Validate prompts and broadcast 1-D (n_k,) vectors to (B, n_k)."""
        if not self.prompt:
            return None
        if not isinstance(prompts, Mapping):
            raise ValueError(f"prompts must be a dict with keys {list(PROMPT_KEYS)} of one-hot tensors (B, n).")
        checked = {}
        for key, size in self.prompt_sizes.items():
            if key not in prompts:
                raise ValueError(f"prompt '{key}' is missing; expected keys {list(PROMPT_KEYS)}.")
            value = prompts[key]
            if value.dim() == 1:
                value = value.unsqueeze(0).expand(batch, -1)
            if value.shape != (batch, size):
                raise ValueError(f"prompt '{key}' must have shape ({batch}, {size}) or ({size},), got {tuple(value.shape)}.")
            checked[key] = value
        return checked

    def encode(self, image: torch.Tensor, prompts: Mapping[str, torch.Tensor] | None = None) -> EncodedImage:
        """Checked prompts, the padded image and the encoder's features (see :meth:`forward` for the inputs)."""
        if image.dim() != 4 or image.shape[1] != self.in_channels:
            raise ValueError(f"image must have shape (B, {self.in_channels}, H, W), got {tuple(image.shape)}.")
        batch, _, height, width = image.shape
        checked = self._check_prompts(prompts, batch)
        pad_h = -height % self.pad_multiple
        pad_w = -width % self.pad_multiple
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h))
        x = self.pos_drop(self.patch_embed(image))
        skips = []
        for stage in self.encoder:
            skips.append(x)
            x = stage(x)
        return EncodedImage(image, self.encoder_norm(x), skips, checked, (height, width))

    def segment(
        self,
        encoded: EncodedImage,
        seg_decoder: SegmentationDecoder | None = None,
        conv_skips: ConvSkipPath | None = None,
    ) -> torch.Tensor:
        """Seg logits (B, seg_classes, H, W) of ``encoded`` through this network's segmentation path,
        or through another decoder of the same shape (``seg_decoder``, ``conv_skips``: auxiliary decoders)."""
        seg_decoder = seg_decoder or self.seg_decoder
        conv_skips = conv_skips or self.conv_skips
        features = (encoded.bottleneck, encoded.skips, encoded.prompts)
        if conv_skips is None:
            logits = seg_decoder(*features)
        else:
            logits = conv_skips(encoded.image, seg_decoder.features(*features), encoded.prompts)
        height, width = encoded.size
        return logits[:, :, :height, :width]

    def forward(
        self, image: torch.Tensor, prompts: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            image: (B, in_channels, H, W), any H and W.
            prompts: one-hot floats ``{"position": (B, 11), "task": (B, 2), "mode": (B, 3),
                "type": (B, 2)}`` (1-D vectors apply to the whole batch); ignored when
                ``prompt=False``.

        Returns:
            seg logits (B, seg_classes, H, W) and cls logits (B, cls_classes).
        """
        encoded = self.encode(image, prompts)
        return self.segment(encoded), self.cls_decoder(encoded.bottleneck, encoded.skips, encoded.prompts)
