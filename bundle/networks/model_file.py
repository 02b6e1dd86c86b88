"""Self-describing checkpoints: the weights and the plain-data description that rebuilds their network.

Every checkpoint the bundle writes is ``{"model": state_dict, "description": {...}}``, as a
Hugging Face ``config.json`` sits beside its weights. The description holds the network's
constructor arguments, the prompt vocabulary (names, in one-hot order), the segmentation and
classification class names, the input size and intensity handling it was trained with, and the
bundle version. It is plain data, so every checkpoint loads with ``torch.load(...,
weights_only=True)``; a file that needs arbitrary unpickling is refused, never executed.

Three kinds of file load: a described checkpoint (any network size), an official PerceptGuide
``.pth`` (converted, the paper's architecture and vocabulary), and a bare state dict written
before checkpoints described themselves (taken as the paper network; a state dict of another
architecture gets the "does not fit" error listing the keys).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping, Sequence
import dataclasses
from dataclasses import asdict, dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from monai.utils import look_up_option
from torch import nn

from bundle.flags import is_unset
from bundle.networks.checkpoints import check_state_dict, convert_official_state_dict
from bundle.networks.perceptguide import PerceptGuide
from bundle.networks.vocabulary_growth import grow_organ_columns
from bundle.data.registry import DatasetRegistry
from bundle.prompts import (
    CLASSIFICATION,
    DEFAULT_VOCABULARY,
    PROMPT_KEYS,
    PROMPT_NAME_KEYS,
    SEGMENTATION,
    PromptVocabulary,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "ModelDescription",
    "BundleCheckpoint",
    "bundle_version",
    "default_model_path",
    "describe",
    "describe_encoder",
    "initialise_from",
    "load_model",
    "read_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = 1
# "unit_range": 8-bit / 255, other depths min-max per image, gray repeated to RGB (bundle.transforms.io)
INTENSITY_HANDLINGS = ("unit_range",)
# "model": the whole network; "encoder": patch embedding and encoder only (self-supervised pretraining)
CONTENTS = ("model", "encoder")
_OFFICIAL_PREFIXES = ("swin.", "module.swin.")

logger = logging.getLogger(__name__)


def bundle_version() -> str:
    """The installed bundle package's version (``pyproject.toml``)."""
    try:
        return version("perceptguide-bundle")
    except PackageNotFoundError:
        return "unknown"


def _plain(value: Any) -> Any:
    """``value`` as JSON-able data: tuples become lists, mappings plain dicts."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"not plain data: {value!r} ({type(value).__name__})")


@dataclass
class ModelDescription:
    """What a checkpoint says about its network; every field is plain data.

    Args:
        arguments: ``PerceptGuide(**arguments)`` rebuilds the network (``prompt_sizes``
            follows ``vocabulary``).
        vocabulary: prompt key (``position``, ``task``, ``mode``, ``type``) -> names in one-hot order.
        seg_classes: segmentation class names by channel (index 0 the background).
        cls_classes: classification class names by logit.
        image_size: the square input side S it was trained at.
        intensity: how pixels became network input (``INTENSITY_HANDLINGS``).
        bundle_version: the bundle version that wrote it.
        content: ``"model"`` (whole network) or ``"encoder"`` (patch embedding and encoder).
    """

    arguments: dict[str, Any]
    vocabulary: dict[str, list[str]]
    seg_classes: list[str]
    cls_classes: list[str]
    image_size: int
    intensity: str = "unit_range"
    bundle_version: str = field(default_factory=bundle_version)
    content: str = "model"

    def __post_init__(self) -> None:
        look_up_option(self.intensity, INTENSITY_HANDLINGS)
        look_up_option(self.content, CONTENTS)
        if sorted(self.vocabulary) != sorted(PROMPT_KEYS):
            raise ValueError(f"vocabulary needs the keys {list(PROMPT_KEYS)}, got {sorted(self.vocabulary)}")
        self.arguments = _plain(self.arguments)
        self.vocabulary = {key: list(self.vocabulary[key]) for key in PROMPT_KEYS}

    @property
    def prompt_vocabulary(self) -> PromptVocabulary:
        """The vocabulary as the transforms and wrappers take it."""
        v = self.vocabulary
        return PromptVocabulary(tuple(v["position"]), tuple(v["task"]), tuple(v["mode"]), tuple(v["type"]))

    def to_dict(self) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "checkpoint") -> "ModelDescription":
        """Parse a stored description; a ValueError names ``source`` and the offending key."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: 'description' must be a mapping, got {type(data).__name__}")
        if data.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{source}: checkpoint format {data.get('format')!r}, this bundle reads {CHECKPOINT_FORMAT}")
        names = {f.name for f in fields(cls)}
        given = {key: value for key, value in data.items() if key != "format"}
        unknown, missing = sorted(set(given) - names), sorted(k for k in names if k not in given)
        if unknown or missing:
            raise ValueError(f"{source}: description keys unknown {unknown}, missing {missing}")
        try:
            return cls(**given)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: invalid description: {err}") from err

    # ignite's Checkpoint saves and restores any object with these two methods: the description
    # travels in model.pt, model_best.pt and every training-state file.
    def state_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """On resume: the saved description must be this one (another network or vocabulary is refused)."""
        saved = ModelDescription.from_dict(state, "resumed checkpoint")
        for key in ("arguments", "vocabulary", "seg_classes", "cls_classes", "image_size", "content"):
            if getattr(saved, key) != getattr(self, key):
                raise ValueError(f"resumed checkpoint has another {key}: {getattr(saved, key)!r}, config {getattr(self, key)!r}")


def _class_names(specs: Sequence[Any], count: int, fallback: str) -> list[str]:
    """Per output index, the datasets' names for it joined by '/' (``fallback<i>`` where none has one)."""
    names = []
    for index in range(count):
        found = list(dict.fromkeys(spec.classes[index] for spec in specs if index < len(spec.classes)))
        names.append("/".join(found) or f"{fallback}{index}")
    return names


def describe(network: nn.Module, registry: DatasetRegistry, image_size: int, content: str = "model") -> ModelDescription:
    """The description of ``network`` trained on ``registry`` at ``image_size``."""
    arguments = dict(network.arguments)
    arguments["prompt_sizes"] = registry.vocabulary.sizes
    seg = [spec for spec in registry.datasets if spec.task == SEGMENTATION]
    cls = [spec for spec in registry.datasets if spec.task == CLASSIFICATION]
    vocabulary = {key: list(registry.vocabulary.names(key)) for key in PROMPT_KEYS}
    return ModelDescription(
        arguments=arguments,
        vocabulary=vocabulary,
        seg_classes=_class_names(seg, arguments["seg_classes"], "class"),
        cls_classes=_class_names(cls, arguments["cls_classes"], "class"),
        image_size=int(image_size),
        content=content,
    )


def describe_encoder(network: nn.Module, image_size: int) -> ModelDescription:
    """The description of the patch embedding and encoder of ``network``, pretrained without labels
    at ``image_size`` (``content="encoder"``): no dataset, so the default vocabulary and class
    names by index; a stage that loads it with ``initialise_from`` keeps its own."""
    arguments = dict(network.arguments)
    arguments["prompt_sizes"] = DEFAULT_VOCABULARY.sizes
    return ModelDescription(
        arguments=arguments,
        vocabulary={key: list(DEFAULT_VOCABULARY.names(key)) for key in PROMPT_KEYS},
        seg_classes=_class_names([], arguments["seg_classes"], "class"),
        cls_classes=_class_names([], arguments["cls_classes"], "class"),
        image_size=int(image_size),
        content="encoder",
    )


def paper_description() -> ModelDescription:
    """The official network's description: paper architecture, official vocabulary, binary heads."""
    return ModelDescription(
        arguments={},
        vocabulary={key: list(DEFAULT_VOCABULARY.names(key)) for key in PROMPT_KEYS},
        seg_classes=["background", "foreground"],
        cls_classes=["class0", "class1"],
        image_size=224,
    )


@dataclass
class BundleCheckpoint:
    """A checkpoint file read: its weights, what they describe, and where they came from."""

    state_dict: dict[str, torch.Tensor]
    description: ModelDescription
    source: Path
    described: bool = True
    new_organs: tuple[str, ...] = ()  # organs that :meth:`grown` appended to the stored vocabulary

    def check(self, key: str, value: Any) -> Any:
        """The description's ``key`` (e.g. ``image_size``), or ``value`` when None; a contradiction names both."""
        stored = getattr(self.description, key)
        if value is None or str(value).lower() in ("none", "null") or value == stored:
            return stored
        raise ValueError(f"{key} {value!r} contradicts checkpoint {self.source}, which was trained with {key} {stored!r}")

    def check_prompts(self, **names: str | None) -> None:
        """Each prompt name given (``organ=``, ``object_type=``, ``mode=``, ``task=``) must be in the vocabulary."""
        vocabulary = self.description.prompt_vocabulary
        for option, name in names.items():
            key = PROMPT_NAME_KEYS[option]
            if name is not None and name not in vocabulary.names(key):
                raise ValueError(
                    f"{option} '{name}' is not in the vocabulary of checkpoint {self.source}: {list(vocabulary.names(key))}"
                )

    def grown(self, registry: DatasetRegistry) -> "BundleCheckpoint":
        """This checkpoint with the organs of ``registry`` it lacks appended to its vocabulary.

        New organs' prompt columns start as ``registry.organ_init`` says (a known organ's, else the
        mean of the known ones'); every old organ's outputs stay those of this checkpoint. Without
        new organs the checkpoint itself is returned.
        """
        old_organs = self.description.vocabulary["position"]
        organs = list(self.description.prompt_vocabulary.extended(registry.vocabulary.organs).organs)
        if organs == old_organs:
            return self
        state = grow_organ_columns(self.state_dict, old_organs, organs, registry.organ_init)
        vocabulary = {**self.description.vocabulary, "position": organs}
        grown = dataclasses.replace(self.description, vocabulary=vocabulary)
        grown.arguments["prompt_sizes"] = grown.prompt_vocabulary.sizes
        appended = tuple(organs[len(old_organs) :])
        return dataclasses.replace(self, state_dict=state, description=grown, new_organs=self.new_organs + appended)

    def adopt(self, registry: DatasetRegistry) -> DatasetRegistry:
        """``registry`` with this checkpoint's vocabulary, for data that a trained model sees.

        Raises:
            ValueError: naming the checkpoint and the registry, when a dataset's organ is not in
                the vocabulary or it has more classes than the network's heads.
        """
        vocabulary = self.description.prompt_vocabulary
        arguments = self.description.arguments
        for spec in registry.datasets:
            where = f"dataset '{spec.name}' of registry {registry.source}"
            if spec.organ not in vocabulary.organs:
                raise ValueError(
                    f"{where} has organ '{spec.organ}', which checkpoint {self.source} does not know: {list(vocabulary.organs)}"
                )
            heads = arguments.get("seg_classes" if spec.task == SEGMENTATION else "cls_classes", 2)
            if len(spec.classes) > heads:
                raise ValueError(
                    f"{where} has {len(spec.classes)} {spec.task} classes; checkpoint {self.source} has {heads} outputs"
                )
        return dataclasses.replace(registry, vocabulary=vocabulary)

    def build(self, **overrides: Any) -> PerceptGuide:
        """The described network with these weights, in eval mode (``overrides``: runtime options
        such as ``attention_impl``, never the architecture)."""
        if self.description.content == "encoder":
            raise ValueError(
                f"checkpoint {self.source} holds only an encoder (self-supervised pretraining): "
                "give it as --init_ckpt to a training stage, not as a model to run"
            )
        arguments = {**self.description.arguments, **overrides}
        arguments["prompt_sizes"] = self.description.prompt_vocabulary.sizes
        network = PerceptGuide(**arguments)
        check_state_dict(network, self.state_dict, source=f"checkpoint {self.source}")
        network.load_state_dict(self.state_dict)
        return network.eval()


def _load_file(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = [line.strip() for line in str(err).splitlines() if "Unsupported global" in line]
        if not refused:
            raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
        raise ValueError(
            f"checkpoint {path} needs arbitrary unpickling (objects other than tensors and plain data); "
            f"it is refused, not executed: {refused[0]}"
        ) from err
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err


def read_checkpoint(path: str | Path) -> BundleCheckpoint:
    """Read any checkpoint the bundle accepts (see the module docstring).

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file: unreadable, refused (needs unpickling), no state dict, or a
            malformed description.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    content = _load_file(path)
    description = None
    if isinstance(content, Mapping) and "description" in content:
        description = ModelDescription.from_dict(content["description"], source=f"checkpoint {path}")
    if isinstance(content, Mapping) and isinstance(content.get("model"), Mapping):
        content = content["model"]
    if not isinstance(content, Mapping) or not content or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise ValueError(f"checkpoint {path} does not hold a state dict")
    state = dict(content)
    if any(key.startswith(_OFFICIAL_PREFIXES) for key in state):
        state = convert_official_state_dict(state)
    if description is None:
        return BundleCheckpoint(state, paper_description(), path, described=False)
    return BundleCheckpoint(state, description, path)


# the shipped weights (large_files.yml), and the model a user's adaptation (``make demo``) leaves beside them
PRETRAINED_MODEL = Path("models") / "pretrained.pt"
ADAPTED_MODEL = Path("models") / "model.pt"


def default_model_path(bundle_root: str | Path) -> Path:
    """The checkpoint that runs when none is named: ``models/model.pt`` (adapted to the user's data, as
    ``make demo`` leaves it) when it exists, else the shipped ``models/pretrained.pt``."""
    adapted = Path(bundle_root) / ADAPTED_MODEL
    chosen = adapted if adapted.is_file() else Path(bundle_root) / PRETRAINED_MODEL
    logger.info("checkpoint: %s", chosen)
    return chosen


def load_model(path: str | Path, **overrides: Any) -> PerceptGuide:
    """The network the checkpoint at ``path`` describes, with its weights, in eval mode."""
    return read_checkpoint(path).build(**overrides)


def save_checkpoint(path: str | Path, network: nn.Module, description: ModelDescription) -> Path:
    """Write ``{"model": state_dict, "description": ...}`` to ``path`` (atomically: temp file, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save({"model": network.state_dict(), "description": description.to_dict()}, partial)
    partial.replace(path)
    return path


def _group(key: str) -> str:
    """The module group a state-dict key belongs to, for the log (``encoder.0``, ``seg_decoder``...)."""
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] == "encoder" else parts[0]


def initialise_from(network: nn.Module, path: str | Path | None) -> nn.Module:
    """Start ``network`` from the tensors of checkpoint ``path`` whose names and shapes it shares.

    Any bundle checkpoint works (a whole model, or a self-supervised encoder); the log says how
    many tensors were loaded and which module groups kept their initial values. ``path`` None
    leaves the network as built.

    Raises:
        ValueError: naming the file, when a shared tensor has another shape (another network
            width or depth) or when no tensor name is shared at all.
    """
    if is_unset(path):
        return network
    checkpoint = read_checkpoint(path)
    own = network.state_dict()
    mismatched = [
        f"{key}: checkpoint {tuple(value.shape)} vs network {tuple(own[key].shape)}"
        for key, value in checkpoint.state_dict.items()
        if key in own and value.shape != own[key].shape
    ]
    if mismatched:
        raise ValueError(
            f"init_ckpt {path} does not fit this network ({len(mismatched)} shapes differ; another "
            "width, depth or vocabulary?): " + ", ".join(mismatched[:10])
        )
    shared = {key: value for key, value in checkpoint.state_dict.items() if key in own}
    if not shared:
        raise ValueError(f"init_ckpt {path} shares no tensor name with this network; is it a PerceptGuide checkpoint?")
    network.load_state_dict(shared, strict=False)
    untouched = sorted({_group(key) for key in own if key not in shared})
    logger.info(
        "init_ckpt %s: loaded %d of %d tensors; left at their initial values: %s",
        path, len(shared), len(own), ", ".join(untouched) or "none",
    )
    return network
