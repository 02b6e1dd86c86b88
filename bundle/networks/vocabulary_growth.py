"""Grow a trained network's organ vocabulary: new position-prompt columns, old organs untouched.

Every layer that reads the organ one-hot is a Linear whose input starts with the organ columns:
each decoder block's ``prompt_proj.position_prompt`` (input: the organ one-hot alone) and each
convolutional up-block's ``prompt_proj`` (input: the four one-hots concatenated, organs first).
Growing inserts one input column per new organ right after the old organ columns. An old organ's
one-hot is 0 in every new column, so its outputs are those of the checkpoint, bit for bit.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import torch

__all__ = ["ORGAN_INPUT_WEIGHT", "grow_organ_columns", "new_organ_columns"]

logger = logging.getLogger(__name__)

# state-dict keys of the Linear weights (out, in) whose input columns start with the organ one-hot
ORGAN_INPUT_WEIGHT = re.compile(r"(^|\.)prompt_proj\.(position_prompt\.)?weight$")


def new_organ_columns(
    weight: torch.Tensor, old_organs: Sequence[str], new_organs: Sequence[str], organ_init: Mapping[str, str]
) -> torch.Tensor:
    """The columns (out, len(new_organs)) for the new organs of one weight (out, in).

    A new organ copies the column of its ``organ_init`` organ, else takes the mean of the old organs'.
    """
    organ_block = weight[:, : len(old_organs)]
    columns = []
    for organ in new_organs:
        source = organ_init.get(organ)
        columns.append(organ_block[:, old_organs.index(source)] if source else organ_block.mean(dim=1))
    return torch.stack(columns, dim=1)


def grow_organ_columns(
    state_dict: Mapping[str, torch.Tensor],
    old_organs: Sequence[str],
    organs: Sequence[str],
    organ_init: Mapping[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """``state_dict`` for the vocabulary ``organs`` (``old_organs`` followed by new names).

    Args:
        state_dict: a PerceptGuide state dict trained with ``old_organs``.
        old_organs: the checkpoint's organ names, in one-hot order.
        organs: the grown list; it must start with ``old_organs``.
        organ_init: new organ -> an organ whose columns it copies (one of ``organs`` before it);
            others start from the mean of the old organs' columns.

    Raises:
        ValueError: ``organs`` does not extend ``old_organs``, an ``organ_init`` source is unknown,
            or a prompt weight has fewer input columns than the old vocabulary.
    """
    organ_init = dict(organ_init or {})
    old_organs, organs = list(old_organs), list(organs)
    if organs[: len(old_organs)] != old_organs:
        raise ValueError(f"the grown organ list {organs} must start with the checkpoint's {old_organs}")
    new_organs = organs[len(old_organs) :]
    for organ, source in organ_init.items():
        if organ in new_organs and source not in old_organs:
            raise ValueError(f"new organ '{organ}' has init_from '{source}', which the checkpoint does not know: {old_organs}")
    if not new_organs:
        return dict(state_dict)
    grown = {}
    for key, value in state_dict.items():
        if ORGAN_INPUT_WEIGHT.search(key):
            if value.dim() != 2 or value.shape[1] < len(old_organs):
                raise ValueError(f"{key} has shape {tuple(value.shape)}: no room for {len(old_organs)} organ columns")
            split = len(old_organs)
            columns = new_organ_columns(value, old_organs, new_organs, organ_init).to(value.dtype)
            value = torch.cat([value[:, :split], columns, value[:, split:]], dim=1)
        grown[key] = value
    logger.info(
        "organ vocabulary grown by %s (initialised from %s)",
        new_organs, {organ: organ_init.get(organ, "the mean of the known organs") for organ in new_organs},
    )
    return grown
