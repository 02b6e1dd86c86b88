"""The final sample: 3-channel image, task-masked targets and one-hot prompts from prompt names."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.transforms import Transform

from bundle.prompts import DEFAULT_VOCABULARY, PROMPT_NAME_KEYS, TASK_IDS, PromptVocabulary, prompt_field
from bundle.transforms.io import file_of

SAMPLE_KEYS: tuple[str, ...] = (
    "image",
    "label",
    "cls_label",
    "task_id",
    "position_prompt",
    "task_prompt",
    "mode_prompt",
    "type_prompt",
    "labelled",
    "dataset",
)
INFERENCE_KEYS: tuple[str, ...] = ("image", "task_id", "position_prompt", "task_prompt", "mode_prompt", "type_prompt")


class EncodePromptsd(Transform):
    """Prompt names of a sample -> float32 one-hot ``position_prompt``, ``task_prompt``, ``mode_prompt``, ``type_prompt`` and ``task_id``.

    Names come from the sample (``organ``, ``task``, ``mode``, ``object_type``), else from
    ``defaults``; an unknown name is an error listing the allowed ones.

    Args:
        vocabulary: the prompt vocabulary (a registry's, when it extends the organs).
        defaults: fallback names by sample name key, e.g. ``{"organ": "breast"}``.
    """

    def __init__(self, vocabulary: PromptVocabulary = DEFAULT_VOCABULARY, defaults: Mapping[str, str] | None = None):
        self.vocabulary = vocabulary
        self.defaults = dict(defaults or {})
        unknown = set(self.defaults) - set(PROMPT_NAME_KEYS)
        if unknown:
            raise ValueError(f"unknown prompt name keys {sorted(unknown)}, expected {list(PROMPT_NAME_KEYS)}")
        for name_key, value in self.defaults.items():
            vocabulary.index(PROMPT_NAME_KEYS[name_key], value)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for name_key, prompt_key in PROMPT_NAME_KEYS.items():
            name = d.get(name_key, self.defaults.get(name_key))
            if name is None:
                raise ValueError(f"sample {file_of(d.get('image'))} has no '{name_key}' prompt name and no default")
            try:
                d[prompt_field(prompt_key)] = self.vocabulary.one_hot(prompt_key, str(name))
            except ValueError as err:
                raise ValueError(f"sample {file_of(d.get('image'))}: {err}") from None
            if name_key == "task":
                d["task_id"] = torch.tensor(TASK_IDS[str(name)], dtype=torch.int64)
        return d


class TaskTargetsd(Transform):
    """Targets every sample carries, whatever its task, so losses can mask by ``task_id``.

    ``label`` -> int64 (1, H, W) class indices, all zeros for a classification sample (it has
    none); ``cls_label`` -> int64 scalar (0 for segmentation); ``labelled`` -> int64 scalar, 1
    unless the sample says 0 (an unlabelled image of consistency training).
    """

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        label = d.get("label")
        d["label"] = torch.zeros_like(d["image"][:1], dtype=torch.int64) if label is None else label.round().long()
        d["cls_label"] = torch.tensor(int(d["cls_label"]), dtype=torch.int64)
        d["labelled"] = torch.tensor(int(d.get("labelled", 1)), dtype=torch.int64)
        return d
