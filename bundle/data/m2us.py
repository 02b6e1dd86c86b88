"""Reader for the M²-US folder layout of the official PerceptGuide README.

::

    segmentation/<Dataset>/{imgs/, masks/, config.yaml, train.txt, val.txt, test.txt}
    classification/<Dataset>/{0/, 1/, ..., config.yaml, train.txt, val.txt, test.txt}

Segmentation list lines name a file of ``imgs/`` whose mask is the same name in ``masks/``
(or the same stem with ``.png``); classification lines are ``<class index>/<file>``.
"""

from __future__ import annotations

from pathlib import Path

from bundle.data.registry import SEGMENTATION, DatasetRegistry, DatasetSpec, as_registry
from bundle.data.samples import make_sample


def m2us_samples(registry: DatasetRegistry | str | Path, split: str) -> list[dict]:
    """Samples of ``split`` (list file ``<split>.txt``) of every registry dataset, in registry order.

    Raises:
        ValueError: a dataset without ``root``, or a malformed list line.
        FileNotFoundError: a missing dataset folder, list file, image or mask (naming the list
            file and line).
    """
    registry = as_registry(registry)
    samples: list[dict] = []
    for spec in registry.datasets:
        samples.extend(_dataset_samples(spec, split, registry.source))
    return samples


def _dataset_samples(spec: DatasetSpec, split: str, source: Path) -> list[dict]:
    if spec.root is None:
        raise ValueError(f"registry {source}: dataset '{spec.name}' ({spec.task}) has no 'root' folder; use a datalist")
    if not spec.root.is_dir():
        raise FileNotFoundError(f"dataset folder of '{spec.name}' ({spec.task}) not found: {spec.root}")
    list_file = spec.root / f"{split}.txt"
    if not list_file.is_file():
        raise FileNotFoundError(f"list file of split '{split}' for dataset '{spec.name}' not found: {list_file}")
    samples = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        where = f"{list_file}, line {number}"
        if spec.task == SEGMENTATION:
            mask = _mask_path(spec.root / "masks", name)
            samples.append(make_sample(spec, spec.root / "imgs" / name, mask, None, where))
        else:
            samples.append(make_sample(spec, spec.root / name, _class_index(name, where), _cls_mask(spec, name), where))
    return samples


def _mask_path(mask_dir: Path, name: str) -> Path:
    """The mask of image ``name``: the same file name, else the same stem with ``.png`` (official)."""
    same = mask_dir / name
    return same if same.is_file() else (mask_dir / name).with_suffix(".png")


def _class_index(name: str, where: str) -> int:
    folder = Path(name).parts[0] if len(Path(name).parts) > 1 else ""
    if not folder.isdigit():
        raise ValueError(f"{where}: classification lines must be '<class index>/<file>', got '{name}'")
    return int(folder)


def _cls_mask(spec: DatasetSpec, name: str) -> Path | None:
    return None if spec.mask_dir is None else spec.mask_dir / f"{Path(name).stem}.png"
