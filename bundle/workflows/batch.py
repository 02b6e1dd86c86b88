"""Batch preparation: image, multi-task targets and prompts for ``network(image, prompts)``."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.utils import convert_to_tensor

from bundle.prompts import PROMPT_KEYS, prompt_field

__all__ = ["PreparePromptBatch"]


class PreparePromptBatch(PrepareBatch):
    """Turn a collated sample batch into ``(image, targets, (prompts,), {})`` for MONAI's engines.

    The engine then calls ``inferer(image, network, prompts)`` and
    ``loss_function(pred, targets)``. Targets stay a dict because one batch mixes segmentation
    and classification samples: ``{"label": (B, 1, H, W), "cls_label": (B,), "task_id": (B,),
    "dataset": list[str]}``. Keys a batch lacks (e.g. labels at inference) are left out.
    """

    def __call__(
        self,
        batchdata: dict[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, Any], tuple[dict[str, torch.Tensor]], dict]:
        def move(value: Any) -> torch.Tensor:
            return convert_to_tensor(value, track_meta=False).to(device=device, non_blocking=non_blocking, **kwargs)

        missing = [prompt_field(k) for k in PROMPT_KEYS if prompt_field(k) not in batchdata]
        if "image" not in batchdata or missing:
            raise KeyError(f"batch lacks {(['image'] if 'image' not in batchdata else []) + missing}; got {sorted(batchdata)}")
        image = move(batchdata["image"])
        prompts = {key: move(batchdata[prompt_field(key)]).float() for key in PROMPT_KEYS}
        targets: dict[str, Any] = {}
        for key in ("label", "cls_label", "task_id", "labelled"):
            if key in batchdata:
                targets[key] = move(batchdata[key]).long()
        if "dataset" in batchdata:
            targets["dataset"] = list(batchdata["dataset"])
        return image, targets, (prompts,), {}
