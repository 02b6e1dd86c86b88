"""Auxiliary segmentation decoders on perturbed encoder features, for cross-consistency training (after MGCC).

During training the wrapped network's encoder feeds its own segmentation decoder and, through a
feature perturbation each, ``K`` auxiliary copies of it; on unlabelled images the auxiliary
predictions are pulled towards the main one (``bundle.workflows.consistency``). Only the main
network is saved, exported and served: the wrapper is a training-time view.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from monai.utils import look_up_option
from torch import nn

from bundle.networks.perceptguide import EncodedImage, PerceptGuide

__all__ = ["PERTURBATIONS", "FeatureNoise", "FeatureDrop", "ConsistencyNetwork"]


class FeatureNoise(nn.Module):
    """Multiply every feature by ``1 + u``, u ~ U(-amount, amount) drawn per position and channel
    (the same for every image of the batch).

    Args:
        amount: the largest relative change (0.3: ±30 %).
    """

    def __init__(self, amount: float = 0.3) -> None:
        super().__init__()
        self.amount = amount

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w, C) -> same shape."""
        noise = torch.empty_like(tokens[:1]).uniform_(-self.amount, self.amount)
        return tokens * (1 + noise)


class FeatureDrop(nn.Module):
    """Zero the most active tokens (attention-like dropout): those whose channel mean exceeds
    ``γ`` times the image's largest, γ ~ U(low, high), so the decoder must use the context.

    Args:
        low, high: range of the threshold γ.
    """

    def __init__(self, low: float = 0.7, high: float = 0.9) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w, C) -> same shape."""
        activity = tokens.mean(-1, keepdim=True)  # (B, h, w, 1)
        peak = activity.flatten(1).amax(1).view(-1, 1, 1, 1)
        threshold = peak * torch.empty_like(peak).uniform_(self.low, self.high)
        return tokens * (activity < threshold)


# name -> builder; auxiliary decoder i takes PERTURBATIONS[names[i % len(names)]]
PERTURBATIONS = {
    "dropout": lambda: nn.Dropout(0.5),
    "noise": FeatureNoise,
    "drop": FeatureDrop,
}


class ConsistencyNetwork(nn.Module):
    """``network`` with ``num_aux`` auxiliary segmentation decoders for cross-consistency training.

    In training mode ``forward`` returns ``(seg, cls, [aux_seg_1, ..., aux_seg_K])``; in eval mode
    the wrapped network's ``(seg, cls)``, so validation and checkpoints see the main network only.

    Args:
        network: the PerceptGuide to train (its own decoders are the main ones).
        num_aux: number of auxiliary decoders (MGCC uses 1-3).
        perturbations: perturbation names (``PERTURBATIONS``), used in turn by the auxiliary decoders.
    """

    def __init__(
        self, network: PerceptGuide, num_aux: int = 3, perturbations: tuple[str, ...] = ("dropout", "noise", "drop")
    ) -> None:
        super().__init__()
        if num_aux < 1:
            raise ValueError(f"num_aux must be >= 1, got {num_aux}")
        builders = [look_up_option(name, PERTURBATIONS) for name in perturbations]
        self.network = network
        self.perturbations = nn.ModuleList(builders[i % len(builders)]() for i in range(num_aux))
        self.aux_decoders = nn.ModuleList(self._fresh_copy(network.seg_decoder) for _ in range(num_aux))
        self.aux_conv_skips = nn.ModuleList(
            self._fresh_copy(network.conv_skips) for _ in range(num_aux if network.conv_skips is not None else 0)
        )

    def _fresh_copy(self, module: nn.Module) -> nn.Module:
        """A copy of ``module`` with newly drawn weights (decoders that start alike would agree for nothing)."""
        duplicate = copy.deepcopy(module)
        for part in duplicate.modules():
            if isinstance(part, nn.modules.conv._ConvNd):
                part.reset_parameters()
        return self.network.initialise(duplicate)

    def _perturbed(self, encoded: EncodedImage, perturbation: nn.Module) -> EncodedImage:
        return EncodedImage(
            encoded.image,
            perturbation(encoded.bottleneck),
            [perturbation(skip) for skip in encoded.skips],
            encoded.prompts,
            encoded.size,
        )

    def forward(
        self, image: torch.Tensor, prompts: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """
        Args:
            image: (B, C, H, W); prompts as :meth:`PerceptGuide.forward` takes them.

        Returns:
            seg logits (B, K, H, W), cls logits (B, M) and, in training, the auxiliary seg logits.
        """
        if not self.training:
            return self.network(image, prompts)
        net = self.network
        encoded = net.encode(image, prompts)
        seg = net.segment(encoded)
        cls = net.cls_decoder(encoded.bottleneck, encoded.skips, encoded.prompts)
        aux = []
        for i, (perturbation, decoder) in enumerate(zip(self.perturbations, self.aux_decoders)):
            conv = self.aux_conv_skips[i] if len(self.aux_conv_skips) else None
            aux.append(net.segment(self._perturbed(encoded, perturbation), decoder, conv))
        return seg, cls, aux
