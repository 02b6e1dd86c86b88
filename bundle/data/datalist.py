"""Reader and writer of MONAI datalist JSON files.

Datalist keys follow the model zoo (``training`` / ``validation`` / ``test``); an entry is::

    {"image": "imgs/a.png", "label": "masks/a.png", "dataset": "BUSI", "task": "segmentation"}
    {"image": "1/a.png", "cls_label": 1, "mask": "masks/a.png", "dataset": "BUSI", "task": "classification"}

``cls_label`` may also be the class name. Relative paths start at the JSON file's folder.
Prompts (organ, object type) come from the registry declaration of ``(dataset, task)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from bundle.data.registry import SEGMENTATION, DatasetRegistry, as_registry
from bundle.data.samples import make_sample

SPLIT_KEYS: dict[str, str] = {"train": "training", "val": "validation", "test": "test"}
_ENTRY_KEYS = ("image", "label", "mask", "cls_label", "dataset", "task")


def datalist_key(split: str) -> str:
    """Datalist key of ``split``: ``train`` -> ``training``, ``val`` -> ``validation``, others unchanged."""
    return SPLIT_KEYS.get(split, split)


def datalist_samples(datalist: str | Path, split: str, registry: DatasetRegistry | str | Path) -> list[dict]:
    """Samples of ``split`` from a datalist JSON, identical to what ``m2us_samples`` gives.

    Raises:
        FileNotFoundError: the JSON or a listed file is absent (naming the entry).
        ValueError: a missing split key, malformed entry, or dataset / task not in the registry.
    """
    # The JSON is read directly rather than through monai.data.load_decathlon_datalist: that
    # function rewrites any string value that happens to name an existing path (e.g. "task":
    # "segmentation" next to a segmentation/ folder) into an absolute path.
    registry = as_registry(registry)
    path = Path(datalist)
    if not path.is_file():
        raise FileNotFoundError(f"datalist file not found: {path}")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"datalist {path} is not valid JSON: {err}") from None
    key = datalist_key(split)
    if not isinstance(content, Mapping) or key not in content:
        found = list(content) if isinstance(content, Mapping) else type(content).__name__
        raise ValueError(f"datalist {path} has no '{key}' list for split '{split}' (found {found})")
    entries = content[key]
    if not isinstance(entries, list):
        raise ValueError(f"datalist {path}: '{key}' must be a list of entries")
    return [
        _entry_sample(entry, f"datalist {path}, {key}[{i}]", path.parent, registry) for i, entry in enumerate(entries)
    ]


def _entry_sample(entry: object, where: str, base: Path, registry: DatasetRegistry) -> dict:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {entry!r}")
    unknown = set(entry) - set(_ENTRY_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}, allowed {list(_ENTRY_KEYS)}")
    missing = [k for k in ("image", "dataset", "task") if k not in entry]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")
    try:
        spec = registry.get(entry["dataset"], entry["task"])
    except KeyError as err:
        raise ValueError(f"{where}: {err.args[0]}") from None
    if spec.task == SEGMENTATION:
        if "label" not in entry:
            raise ValueError(f"{where}: a segmentation entry needs 'label' (the mask file)")
        target: Path | int = base / entry["label"]
        mask = None
    else:
        if "cls_label" not in entry:
            raise ValueError(f"{where}: a classification entry needs 'cls_label' (class index or name)")
        target = _class_index(entry["cls_label"], spec.classes, where)
        mask = base / entry["mask"] if "mask" in entry else None
    return make_sample(spec, base / entry["image"], target, mask, where)


def _class_index(value: object, classes: Sequence[str], where: str) -> int:
    if isinstance(value, str):
        if value not in classes:
            raise ValueError(f"{where}: unknown class '{value}', expected one of {list(classes)}")
        return classes.index(value)
    return value  # type: ignore[return-value]  # make_sample checks the range


def write_datalist(path: str | Path, splits: Mapping[str, Sequence[Mapping]]) -> Path:
    """Write ``{datalist_key(split): entries}`` as JSON; entry paths should be relative to ``path``'s folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {datalist_key(split): [dict(entry) for entry in entries] for split, entries in splits.items()}
    path.write_text(json.dumps(content, indent=1) + "\n")
    return path
