"""The dataset registry: a YAML file declaring every dataset, its task, prompts and classes.

A registry file looks like::

    extra_organs: []                 # organ names appended to the official position vocabulary; an entry
                                     # {name: nerve, init_from: breast} also says how adaptation starts
                                     # its prompt weights (default: the mean of the known organs)
    datasets:
      - name: BUSI
        task: segmentation           # segmentation | classification
        organ: breast                # position prompt name
        object_type: tumor           # tumor | organ
        root: segmentation/BUSI      # M²-US folder (relative to the registry's folder)
        classes: {background: 0, tumor: 255}   # optional: else root/config.yaml
      - name: BUSI
        task: classification
        organ: breast
        object_type: tumor
        root: classification/BUSI
        classes: [benign, malignant] # optional: else root/config.yaml
        mask_dir: segmentation/BUSI/masks      # optional: masks by image stem (local / location modes)

Segmentation classes map a class name to its value in the mask files, in class-index order;
without ``classes`` the official ``index:name:value_in_mask`` lines of ``root/config.yaml`` are
read (classification: ``index:name`` lines). Class index 0 of a segmentation dataset is the
background.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bundle.prompts import CLASSIFICATION, DEFAULT_VOCABULARY, OBJECT_TYPES, SEGMENTATION, TASKS, PromptVocabulary

_REGISTRY_KEYS = {"datasets", "extra_organs"}
_REQUIRED_KEYS = ("name", "task", "organ", "object_type")
_OPTIONAL_KEYS = ("root", "classes", "mask_dir")


@dataclass(frozen=True)
class DatasetSpec:
    """One declared dataset.

    Args:
        name: dataset name, the ``"dataset"`` string of its samples.
        task: ``"segmentation"`` or ``"classification"``.
        organ: position prompt name.
        object_type: object-type prompt name.
        classes: class names in class-index order (segmentation: index 0 is the background).
        mask_values: segmentation only: the value of each class in the mask files.
        root: the dataset's M²-US folder, if it has one.
        mask_dir: classification only: folder of masks named like the images (stem + ``.png``);
            it enables the local and location input modes.
    """

    name: str
    task: str
    organ: str
    object_type: str
    classes: tuple[str, ...]
    mask_values: tuple[int, ...] = ()
    root: Path | None = None
    mask_dir: Path | None = None

    @property
    def key(self) -> tuple[str, str]:
        """``(task, name)``: a name may be declared once per task."""
        return self.task, self.name

    @property
    def value_to_index(self) -> dict[int, int]:
        """Segmentation: mask-file value -> class index."""
        return {value: index for index, value in enumerate(self.mask_values)}


@dataclass(frozen=True)
class DatasetRegistry:
    """All declared datasets and the prompt vocabulary they need.

    Args:
        datasets: the dataset declarations, in file order.
        vocabulary: the official vocabulary extended by the registry's ``extra_organs``; the
            network's ``prompt_sizes`` follow ``vocabulary.sizes``.
        source: the registry file (named in error messages).
        organ_init: extra organ -> the known organ whose prompt weights a checkpoint grown for it
            copies (:meth:`bundle.networks.BundleCheckpoint.grown`); organs absent here start
            from the mean of the known ones.
    """

    datasets: tuple[DatasetSpec, ...]
    vocabulary: PromptVocabulary
    source: Path
    organ_init: Mapping[str, str] = field(default_factory=dict)

    def get(self, name: str, task: str) -> DatasetSpec:
        """The declaration of dataset ``name`` for ``task``; a KeyError lists the declared ones."""
        for spec in self.datasets:
            if spec.key == (task, name):
                return spec
        declared = [f"{spec.name} ({spec.task})" for spec in self.datasets]
        raise KeyError(f"dataset '{name}' ({task}) is not declared in registry {self.source}; declared: {declared}")

    @property
    def num_seg_classes(self) -> int:
        """Segmentation output channels: the largest class count of the segmentation datasets (min 2)."""
        return max([len(s.classes) for s in self.datasets if s.task == SEGMENTATION] + [2])

    @property
    def num_cls_classes(self) -> int:
        """Classification outputs: the largest class count of the classification datasets (min 2)."""
        return max([len(s.classes) for s in self.datasets if s.task == CLASSIFICATION] + [2])


def load_registry(path: str | Path, data_root: str | Path | None = None) -> DatasetRegistry:
    """Read and validate a registry YAML file.

    Args:
        path: the registry file.
        data_root: folder that relative ``root`` / ``mask_dir`` paths start from; defaults to the
            registry file's folder.

    Raises:
        FileNotFoundError: the registry file does not exist.
        ValueError: a malformed entry or an unknown task / organ / object type, naming the file,
            the dataset and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset registry file not found: {path}")
    content = yaml.safe_load(path.read_text())
    if not isinstance(content, dict) or "datasets" not in content:
        raise ValueError(f"registry {path}: expected a mapping with a 'datasets' list")
    unknown = set(content) - _REGISTRY_KEYS
    if unknown:
        raise ValueError(f"registry {path}: unknown top-level keys {sorted(unknown)}, allowed {sorted(_REGISTRY_KEYS)}")
    entries = content["datasets"]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"registry {path}: 'datasets' must be a non-empty list")
    extra_organs, organ_init = _parse_extra_organs(content.get("extra_organs") or [], path)
    vocabulary = DEFAULT_VOCABULARY.extended(extra_organs)
    for organ, source_organ in organ_init.items():
        if source_organ not in vocabulary.organs or source_organ == organ:
            raise ValueError(
                f"registry {path}: extra organ '{organ}' has init_from '{source_organ}', "
                f"which is not another organ of {list(vocabulary.organs)}"
            )
    base = Path(data_root) if data_root is not None else path.parent
    specs = tuple(_parse_entry(entry, i, path, base, vocabulary) for i, entry in enumerate(entries))
    keys = [spec.key for spec in specs]
    duplicates = sorted({f"{name} ({task})" for task, name in keys if keys.count((task, name)) > 1})
    if duplicates:
        raise ValueError(f"registry {path}: datasets declared twice for the same task: {duplicates}")
    return DatasetRegistry(specs, vocabulary, path, organ_init)


def _parse_extra_organs(entries: Any, path: Path) -> tuple[list[str], dict[str, str]]:
    """``extra_organs`` items (a name, or ``{name: NAME, init_from: ORGAN}``) -> names, {name: init_from}."""
    if not isinstance(entries, list):
        raise ValueError(f"registry {path}: 'extra_organs' must be a list of names or {{name, init_from}} mappings")
    names, organ_init = [], {}
    for entry in entries:
        if isinstance(entry, str):
            names.append(entry)
        elif isinstance(entry, Mapping) and isinstance(entry.get("name"), str) and set(entry) <= {"name", "init_from"}:
            names.append(entry["name"])
            if entry.get("init_from") is not None:
                organ_init[entry["name"]] = str(entry["init_from"])
        else:
            raise ValueError(
                f"registry {path}: 'extra_organs' entry {entry!r} is neither a name nor {{name: NAME, init_from: ORGAN}}"
            )
    return names, organ_init


def as_registry(registry: DatasetRegistry | str | Path) -> DatasetRegistry:
    """``registry`` itself, or the registry loaded from that file."""
    return registry if isinstance(registry, DatasetRegistry) else load_registry(registry)


def read_official_config(path: Path, task: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Class names (and segmentation mask values) from an official M²-US ``config.yaml``.

    Segmentation lines are ``index:name:value_in_mask``; classification lines ``index:name``.
    Indices must be 0..K-1; a segmentation file without a line for index 0 gets
    ``background`` with mask value 0.
    """
    if not path.is_file():
        raise FileNotFoundError(f"class config not found: {path} (declare 'classes' in the registry instead)")
    rows: dict[int, tuple[str, int]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [field.strip() for field in line.split(":")]
        if len(fields) not in ((3,) if task == SEGMENTATION else (2, 3)):
            form = "index:name:value_in_mask" if task == SEGMENTATION else "index:name"
            raise ValueError(f"{path}, line {number}: expected '{form}', got '{line.strip()}'")
        try:
            index = int(fields[0])
            value = int(fields[2]) if task == SEGMENTATION else index
        except ValueError:
            raise ValueError(f"{path}, line {number}: index and value must be integers: '{line.strip()}'") from None
        if index in rows:
            raise ValueError(f"{path}, line {number}: class index {index} given twice")
        rows[index] = (fields[1], value)
    if task == SEGMENTATION and 0 not in rows:
        rows[0] = ("background", 0)
    if sorted(rows) != list(range(len(rows))) or len(rows) < 2:
        raise ValueError(f"{path}: class indices must be 0..K-1 with K >= 2, got {sorted(rows)}")
    names = tuple(rows[i][0] for i in range(len(rows)))
    values = tuple(rows[i][1] for i in range(len(rows))) if task == SEGMENTATION else ()
    return names, values


def _parse_entry(
    entry: Any, position: int, source: Path, base: Path, vocabulary: PromptVocabulary
) -> DatasetSpec:
    where = f"registry {source}, datasets[{position}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping, got {entry!r}")
    missing = [key for key in _REQUIRED_KEYS if key not in entry]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")
    unknown = set(entry) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}, allowed {list(_REQUIRED_KEYS + _OPTIONAL_KEYS)}")
    name, task = str(entry["name"]), entry["task"]
    where = f"registry {source}, dataset '{name}'"
    if task not in TASKS:
        raise ValueError(f"{where}: unknown task '{task}', expected one of {list(TASKS)}")
    if entry["organ"] not in vocabulary.organs:
        raise ValueError(
            f"{where}: unknown organ '{entry['organ']}', expected one of {list(vocabulary.organs)} "
            "(declare new organs under 'extra_organs')"
        )
    if entry["object_type"] not in OBJECT_TYPES:
        raise ValueError(f"{where}: unknown object_type '{entry['object_type']}', expected one of {list(OBJECT_TYPES)}")
    root = _resolve(base, entry.get("root"))
    mask_dir = _resolve(base, entry.get("mask_dir"))
    if mask_dir is not None and task != CLASSIFICATION:
        raise ValueError(f"{where}: 'mask_dir' applies to classification datasets only (segmentation: root/masks)")
    if "classes" in entry:
        names, values = _parse_classes(entry["classes"], task, where)
    elif root is not None:
        if not root.is_dir():
            raise FileNotFoundError(f"{where}: dataset folder of '{name}' ({task}) not found: {root}")
        names, values = read_official_config(root / "config.yaml", task)
    else:
        raise ValueError(f"{where}: declare 'classes' (or a 'root' with a config.yaml)")
    return DatasetSpec(name, task, entry["organ"], entry["object_type"], names, values, root, mask_dir)


def _parse_classes(classes: Any, task: str, where: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if task == SEGMENTATION:
        if not isinstance(classes, Mapping) or len(classes) < 2:
            raise ValueError(f"{where}: segmentation 'classes' must map >= 2 names to mask values, got {classes!r}")
        values = tuple(classes.values())
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values) or len(set(values)) != len(values):
            raise ValueError(f"{where}: segmentation mask values must be distinct integers, got {dict(classes)}")
        return tuple(str(name) for name in classes), values
    if isinstance(classes, str) or not isinstance(classes, Sequence) or len(classes) < 2:
        raise ValueError(f"{where}: classification 'classes' must be a list of >= 2 names, got {classes!r}")
    return tuple(str(name) for name in classes), ()


def _resolve(base: Path, value: Any) -> Path | None:
    if value is None:
        return None
    path = Path(str(value))
    return path if path.is_absolute() else base / path
