"""The four prompt vocabularies of PerceptGuide and their one-hot encoding.

The order of every vocabulary is the official one (PerceptGuide ``datasets/omni_dataset.py``):
checkpoints trained with the official code depend on it, so new organs are only ever appended.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

ORGANS: tuple[str, ...] = (
    "ovary",
    "breast",
    "thyroid",
    "carotid",
    "appendix",
    "liver",
    "cardiac",
    "head",
    "kidney",
    "leg",
    "indis",
)
TASKS: tuple[str, ...] = ("segmentation", "classification")
MODES: tuple[str, ...] = ("whole", "local", "location")
OBJECT_TYPES: tuple[str, ...] = ("tumor", "organ")

PROMPT_KEYS: tuple[str, ...] = ("position", "task", "mode", "type")

# the name of each prompt in a sample dict or on the command line -> its prompt key
PROMPT_NAME_KEYS: dict[str, str] = {"organ": "position", "task": "task", "mode": "mode", "object_type": "type"}

SEGMENTATION, CLASSIFICATION = TASKS


def prompt_field(key: str) -> str:
    """The one name of prompt ``key``'s one-hot vector everywhere: a sample's and a batch's key, a
    network module or parameter (``"type_prompt"``; ``"type"`` itself would shadow ``nn.Module.type``),
    the official code's ``type_prompt``."""
    return f"{key}_prompt"
# a sample's ``task_id``: the task's index in TASKS (its one-hot position)
TASK_IDS: dict[str, int] = {name: index for index, name in enumerate(TASKS)}


@dataclass(frozen=True)
class PromptVocabulary:
    """Names of every prompt value, in one-hot order.

    Args:
        organs: position prompt names; a registry may append organs to the official list.
        tasks: task prompt names.
        modes: input-mode prompt names.
        object_types: object-type prompt names.
    """

    organs: tuple[str, ...] = ORGANS
    tasks: tuple[str, ...] = TASKS
    modes: tuple[str, ...] = MODES
    object_types: tuple[str, ...] = OBJECT_TYPES
    _by_key: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_key = {"position": self.organs, "task": self.tasks, "mode": self.modes, "type": self.object_types}
        for key, names in by_key.items():
            if len(set(names)) != len(names):
                raise ValueError(f"prompt vocabulary '{key}' has duplicate names: {list(names)}")
        object.__setattr__(self, "_by_key", by_key)

    @property
    def sizes(self) -> dict[str, int]:
        """One-hot length of each prompt, keyed like the network's ``prompts`` argument."""
        return {key: len(names) for key, names in self._by_key.items()}

    def names(self, key: str) -> tuple[str, ...]:
        """Allowed names of prompt ``key`` (one of ``PROMPT_KEYS``)."""
        if key not in self._by_key:
            raise KeyError(f"unknown prompt key '{key}', expected one of {list(PROMPT_KEYS)}")
        return self._by_key[key]

    def index(self, key: str, name: str) -> int:
        """Position of ``name`` in prompt ``key``; a ValueError lists the allowed names."""
        names = self.names(key)
        if name not in names:
            raise ValueError(f"unknown {key} prompt '{name}', expected one of {list(names)}")
        return names.index(name)

    def one_hot(self, key: str, name: str) -> torch.Tensor:
        """Float one-hot vector (len(names(key)),) for ``name``."""
        vector = torch.zeros(len(self.names(key)), dtype=torch.float32)
        vector[self.index(key, name)] = 1.0
        return vector

    def encode(self, names: Mapping[str, str]) -> dict[str, torch.Tensor]:
        """One-hot tensors for a full prompt given by name, e.g. ``{"position": "breast", ...}``."""
        missing = [key for key in PROMPT_KEYS if key not in names]
        if missing:
            raise ValueError(f"prompt names are missing {missing}; got {dict(names)}")
        return {key: self.one_hot(key, names[key]) for key in PROMPT_KEYS}

    def extended(self, organs: Sequence[str]) -> "PromptVocabulary":
        """This vocabulary with ``organs`` appended to the position prompt (known names are kept once)."""
        extra = tuple(name for name in dict.fromkeys(organs) if name not in self.organs)
        return PromptVocabulary(self.organs + extra, self.tasks, self.modes, self.object_types)


DEFAULT_VOCABULARY = PromptVocabulary()
