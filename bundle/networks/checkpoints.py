"""Convert official PerceptGuide state dicts, check a state dict against a network, load Swin-T ImageNet weights."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "convert_official_state_dict",
    "to_official_state_dict",
    "load_swin_imagenet",
    "SwinImageNetReport",
]

logger = logging.getLogger(__name__)

# Official buffers this network rebuilds itself (per resolution / window size).
_OFFICIAL_BUFFERS = re.compile(r"\.(attn_mask|attn\.relative_position_index)$")

# Official module prefixes -> ours. Decoder stage i (i >= 1) of the official seg decoder is our
# stage i - 1: the official list keeps the bottleneck expansion at index 0.
_PREFIX_RULES: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^layers\.(\d+)\.res_scale\.", r"encoder.\1.resample."),
        (r"^layers\.(\d+)\.", r"encoder.\1."),
        (r"^norm\.", "encoder_norm."),
        (r"^layers_task_seg_up\.0\.", "seg_decoder.expand_bottleneck."),
        (r"^layers_task_seg_up\.(\d+)\.res_scale\.", lambda m: f"seg_decoder.stages.{int(m[1]) - 1}.resample."),
        (r"^layers_task_seg_up\.(\d+)\.", lambda m: f"seg_decoder.stages.{int(m[1]) - 1}."),
        (r"^layers_task_seg_skip\.(\d+)\.", lambda m: f"seg_decoder.fuse.{int(m[1]) - 1}."),
        (r"^norm_task_seg\.", "seg_decoder.norm."),
        (r"^layers_task_seg_head\.0\.", "seg_decoder.final_expand."),
        (r"^layers_task_seg_head\.1\.", "seg_decoder.out."),
        (r"^layers_task_cls_up\.(\d+)\.res_scale\.", r"cls_decoder.stages.\1.resample."),
        (r"^layers_task_cls_up\.(\d+)\.", r"cls_decoder.stages.\1."),
        (r"^layers_task_cls_skip\.(\d+)\.", lambda m: f"cls_decoder.fuse.{int(m[1]) - 1}."),
        (r"^norm_task_cls\.", "cls_decoder.norm."),
        (r"^layers_task_cls_head\.0\.", "cls_decoder.head."),
    )
)
# Official leaf names inside a Swin block -> ours.
_LEAF_RULES: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"\.mlp\.fc1\.", ".mlp.linear1."),
        (r"\.mlp\.fc2\.", ".mlp.linear2."),
        (r"\.(position|task|mode|type)_prompt_proj_mlp\.", r".prompt_proj.\1_prompt."),
        (r"\.attn\.hyper_param_(position|task|mode|type)$", r".attn.hyper.\1_prompt"),
    )
)


def _bare(key: str) -> str:
    """An official key without the ``module.`` (DDP) and ``swin.`` (``OmniVisionTransformer``) prefixes."""
    return re.sub(r"^(module\.)?(swin\.)?", "", key)


def _fit_error(header: str, groups: Sequence[tuple[str, Sequence[str]]]) -> ValueError:
    """A ValueError under ``header`` listing each non-empty (title, keys) group, 20 keys at most."""
    lines = [header]
    for title, items in groups:
        if items:
            lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
    return ValueError("\n".join(lines))


def _rename(key: str) -> str:
    for pattern, replacement in _PREFIX_RULES:
        renamed, count = pattern.subn(replacement, key)
        if count:
            key = renamed
            break
    for pattern, replacement in _LEAF_RULES:
        key = pattern.sub(replacement, key)
    return key


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """Map an official PerceptGuide state dict to :class:`~bundle.networks.PerceptGuide` keys.

    Accepts keys with or without the ``swin.`` (``OmniVisionTransformer``) and ``module.``
    (DistributedDataParallel) prefixes; drops the official buffers this network recomputes and
    reshapes the hyper vectors (1, heads, d, 1) -> (heads, d).

    Args:
        state_dict: official checkpoint tensors.
        model: if given, the conversion is checked against it strictly.

    Raises:
        ValueError: with ``model``, when keys are missing or unexpected (both listed) or a shape
            differs, e.g. a checkpoint of another size or architecture.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = _bare(key)
        if _OFFICIAL_BUFFERS.search(key):
            continue
        new_key = _rename(key)
        if ".attn.hyper." in new_key:
            value = value.reshape(value.shape[1], value.shape[2])
        converted[new_key] = value
    if model is not None:
        check_state_dict(model, converted, source="official PerceptGuide checkpoint")
    return converted


def to_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_official_state_dict`: our tensors under the official keys.

    The official keys come from ``template``, the state dict of an official model (its tensors may
    be on the meta device): each is mapped with the same rules as the forward conversion, so the
    two cannot drift apart. The official buffers this network does not keep (relative position
    indices, shift masks) are taken from ``template``; hyper vectors are reshaped back
    (heads, d) -> (1, heads, d, 1). Tensors are not copied.

    Raises:
        ValueError: listing official keys with no tensor here, tensors here no official key takes,
            and shape mismatches (e.g. a network of another size).
    """
    official: dict[str, torch.Tensor] = {}
    taken: set[str] = set()
    missing, mismatched = [], []
    for key, reference in template.items():
        bare = _bare(key)
        if _OFFICIAL_BUFFERS.search(bare):
            official[key] = reference
            continue
        ours = _rename(bare)
        if ours not in state_dict or ours in taken:
            missing.append(key)
            continue
        value = state_dict[ours]
        reshape = ".attn.hyper." in ours and value.numel() == reference.numel()
        if value.shape != reference.shape and not reshape:
            mismatched.append(f"{key}: ours {tuple(value.shape)} vs official {tuple(reference.shape)}")
            taken.add(ours)  # listed once, as a mismatch
            continue
        official[key] = value.reshape(reference.shape)
        taken.add(ours)
    unexpected = sorted(set(state_dict) - taken)
    if missing or unexpected or mismatched:
        groups = (("no tensor for", missing), ("unused", unexpected), ("shape mismatch", mismatched))
        raise _fit_error("state dict does not fit the official model:", groups)
    return official


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise a ValueError listing missing / unexpected keys and shape mismatches against ``model``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        groups = (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
        raise _fit_error(f"{source} does not fit {type(model).__name__}:", groups)


class SwinImageNetReport(dict):
    """Which of the model's tensors came from the ImageNet checkpoint: ``{model_key: source_key}``.

    ``skipped`` lists checkpoint keys that fit nowhere (ImageNet head, deeper blocks, other shapes).
    """

    skipped: list[str]


def _swin_sources(model_key: str, encoder_depths: int) -> list[str]:
    """Candidate Swin-T keys for one model key (Swin-Unet style: decoders from encoder stages)."""
    candidates = []
    encoder = re.match(r"^encoder\.(\d+)\.blocks\.(\d+)\.(.*)$", model_key)
    seg = re.match(r"^seg_decoder\.stages\.(\d+)\.blocks\.(\d+)\.(.*)$", model_key)
    cls = re.match(r"^cls_decoder\.stages\.(\d+)\.blocks\.(\d+)\.(.*)$", model_key)
    if encoder:
        candidates.append(f"layers.{encoder[1]}.blocks.{encoder[2]}.{encoder[3]}")
    elif seg:
        # seg stage s works at encoder level L-2-s
        candidates.append(f"layers.{encoder_depths - 2 - int(seg[1])}.blocks.{seg[2]}.{seg[3]}")
    elif cls:
        # cls stage s works at the width of encoder level L-1-s
        candidates.append(f"layers.{encoder_depths - 1 - int(cls[1])}.blocks.{cls[2]}.{cls[3]}")
    elif m := re.match(r"^encoder\.(\d+)\.resample\.(.*)$", model_key):
        candidates.append(f"layers.{m[1]}.downsample.{m[2]}")
    elif model_key.startswith("patch_embed."):
        candidates.append(model_key)
    elif model_key.startswith("encoder_norm."):
        candidates.append("norm." + model_key.split(".", 1)[1])
    return [key.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.") for key in candidates]


def load_swin_imagenet(model: nn.Module, path: str | Path) -> SwinImageNetReport:
    """Initialise encoder and both decoders from a Swin-T ImageNet checkpoint file.

    The file is a Microsoft Swin checkpoint (``{"model": state_dict}`` or a bare state dict). The
    encoder takes stage ``i`` from checkpoint stage ``i``; each decoder stage takes the blocks of
    the checkpoint stage of its width (Swin-Unet style), which fixes the official loader's defect of
    writing decoder weights under keys that do not exist. Tensors whose shape differs are skipped.

    Returns:
        the report of what was loaded and what was skipped (also logged).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Swin ImageNet checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    source = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(source, Mapping):
        raise ValueError(f"{path} does not hold a state dict (expected a dict, optionally under 'model').")
    levels = len(model.encoder)
    target = model.state_dict()
    report = SwinImageNetReport()
    for key, tensor in target.items():
        for candidate in _swin_sources(key, levels):
            if candidate in source and source[candidate].shape == tensor.shape:
                target[key] = source[candidate].to(tensor.dtype)
                report[key] = candidate
                break
    used = set(report.values())
    report.skipped = sorted(key for key in source if key not in used)
    if not report:
        raise ValueError(f"{path}: no tensor fits this network; is it a Swin-T checkpoint?")
    model.load_state_dict(target)
    logger.info("loaded %d tensors from %s; %d checkpoint tensors unused", len(report), path, len(report.skipped))
    return report
