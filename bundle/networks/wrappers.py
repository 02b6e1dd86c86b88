"""Single-input views of PerceptGuide, for tools that call ``network(image)`` and expect one tensor.

MONAI's ``verify_net_in_out``, ``ckpt_export`` (TorchScript), ONNX export and MONAI Label all
expect that interface; the two-output, prompt-taking network stays the one that trains.
"""

from __future__ import annotations

import torch
from monai.utils import look_up_option
from torch import nn

from bundle.prompts import DEFAULT_VOCABULARY, PROMPT_KEYS, PromptVocabulary, prompt_field

__all__ = ["PromptedSegmenter"]

# position of each output in the network's (seg logits, cls logits)
OUTPUTS = {"seg": 0, "cls": 1}


class PromptedSegmenter(nn.Module):
    """PerceptGuide with its four prompts fixed by name: ``forward(image) -> logits``.

    Args:
        net: a :class:`~bundle.networks.PerceptGuide`.
        organ: position prompt name, e.g. ``"breast"``.
        object_type: ``"tumor"`` or ``"organ"``.
        mode: input mode, ``"whole"``, ``"local"`` or ``"location"``.
        task: ``"segmentation"`` or ``"classification"``.
        output: ``"seg"`` for seg logits (B, seg_classes, H, W), ``"cls"`` for cls logits (B, K).
        vocabulary: prompt names; must match the network's prompt sizes.
    """

    def __init__(
        self,
        net: nn.Module,
        organ: str,
        object_type: str,
        mode: str = "whole",
        task: str = "segmentation",
        output: str = "seg",
        vocabulary: PromptVocabulary = DEFAULT_VOCABULARY,
    ) -> None:
        super().__init__()
        self.output_index = look_up_option(output, OUTPUTS)
        if getattr(net, "prompt", False) and vocabulary.sizes != dict(net.prompt_sizes):
            raise ValueError(f"vocabulary sizes {vocabulary.sizes} do not match the network's {dict(net.prompt_sizes)}.")
        self.net = net
        encoded = vocabulary.encode({"position": organ, "task": task, "mode": mode, "type": object_type})
        for key in PROMPT_KEYS:
            self.register_buffer(prompt_field(key), encoded[key].unsqueeze(0), persistent=False)

    # The wrapper's checkpoint is the wrapped network's, key for key, so MONAI's ckpt_export
    # and CheckpointLoader load a PerceptGuide checkpoint (models/model.pt) straight into it.
    def state_dict(self, *args, **kwargs):
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> seg logits (B, seg_classes, H, W) or cls logits (B, cls_classes)."""
        batch = image.shape[0]
        prompts = {key: getattr(self, prompt_field(key)).expand(batch, -1) for key in PROMPT_KEYS}
        return self.net(image, prompts)[self.output_index]
