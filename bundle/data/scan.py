"""Turn a user's folder of images and masks into a datalist JSON and registry entries.

Two layouts are recognised:

- masks beside the images, named ``<stem>_mask.<ext>`` (several per image: ``_mask_1``,
  ``_mask_2``, ... as in BUSI), with optional class folders: ``benign/benign (1).png``,
  ``benign/benign (1)_mask.png``;
- ``images/`` and ``masks/`` folders with matching stems (class folders optional under
  ``images/``, mirrored or flat under ``masks/``).

Several masks of one image are merged (pixel-wise maximum, i.e. union) into one PNG.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from bundle.data.datalist import write_datalist
from bundle.data.files import is_image_file, stem_of
from bundle.data.registry import CLASSIFICATION, SEGMENTATION, load_registry
from bundle.data.samples import SPLITS
from bundle.data.split import split_ids
from bundle.prompts import DEFAULT_VOCABULARY, OBJECT_TYPES

MASK_STEM = re.compile(r"^(?P<stem>.+?)_mask(?:_\d+)?$")


@dataclass(frozen=True)
class ScannedImage:
    """One image found by ``scan_folder``: its file, mask files and class folder (or None)."""

    image: Path
    masks: tuple[Path, ...]
    class_name: str | None


def scan_folder(root: str | Path) -> list[ScannedImage]:
    """Images under ``root`` with their masks and class folder, sorted by path.

    Raises:
        FileNotFoundError: ``root`` is missing.
        ValueError: no images, or mask files whose image is missing (named).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    images_root = root / "images" if (root / "images").is_dir() else root
    masks_root = root / "masks" if images_root != root and (root / "masks").is_dir() else None
    files = sorted(p for p in images_root.rglob("*") if p.is_file() and is_image_file(p))
    masks = [p for p in files if MASK_STEM.match(stem_of(p))]
    images = [p for p in files if not MASK_STEM.match(stem_of(p))]
    if not images:
        raise ValueError(f"no images found under {images_root}")
    by_key: dict[tuple[Path, str], list[Path]] = {}
    for mask in masks:
        by_key.setdefault((mask.parent, MASK_STEM.match(stem_of(mask)).group("stem")), []).append(mask)
    image_keys = {(p.parent, stem_of(p)) for p in images}
    orphans = [str(m) for key, found in by_key.items() if key not in image_keys for m in found]
    if orphans:
        raise ValueError(f"{len(orphans)} mask files have no image beside them, e.g. {orphans[:3]}")
    scanned = []
    for image in images:
        relative = image.relative_to(images_root)
        own = list(by_key.get((image.parent, stem_of(image)), []))
        if masks_root is not None:
            own += _masks_in(masks_root / relative.parent, stem_of(image)) or _masks_in(masks_root, stem_of(image))
        class_name = relative.parts[0] if len(relative.parts) > 1 else None
        scanned.append(ScannedImage(image, tuple(sorted(own)), class_name))
    return scanned


def _masks_in(folder: Path, stem: str) -> list[Path]:
    if not folder.is_dir():
        return []
    return [
        p for p in folder.iterdir()
        if p.is_file() and is_image_file(p) and (stem_of(p) == stem or _mask_of(p) == stem)
    ]


def _mask_of(path: Path) -> str | None:
    match = MASK_STEM.match(stem_of(path))
    return match.group("stem") if match else None


def merge_masks(masks: Sequence[Path], out_path: Path) -> Path:
    """Union (pixel-wise maximum) of several 2D masks of one image, written as PNG."""
    arrays = [np.asarray(Image.open(path)) for path in masks]
    for path, array in zip(masks, arrays):
        if array.shape != arrays[0].shape:
            raise ValueError(f"mask {path} is {array.shape}, but {masks[0]} is {arrays[0].shape}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.maximum.reduce(arrays)).save(out_path)
    return out_path


def mask_values(masks: Sequence[Path]) -> list[int]:
    """Sorted distinct pixel values over all ``masks``."""
    values: set[int] = set()
    for path in masks:
        values.update(int(v) for v in np.unique(np.asarray(Image.open(path))))
    return sorted(values)


def segmentation_classes(values: Sequence[int], foreground: str) -> dict[str, int]:
    """``{"background": 0, foreground: v}`` for binary masks (values 0 and one other)."""
    if len(values) > 2 or (values and values[0] != 0):
        raise ValueError(
            f"masks hold values {list(values)}: not binary 0/v; pass the classes explicitly "
            "(--seg-classes background:0 name:value ...)"
        )
    return {"background": 0, foreground: values[-1] if len(values) == 2 else 255}


@dataclass(frozen=True)
class DatalistSpec:
    """What ``make_datalist`` writes: a dataset's name, prompts and the tasks to list it for."""

    dataset: str
    tasks: tuple[str, ...]
    organ: str
    object_type: str
    classes: tuple[str, ...] = ()  # classification classes to keep, in index order (default: folders)
    seg_classes: Mapping[str, int] | None = None  # name -> mask value (default: from the masks)
    new_organ: bool = False  # ``organ`` is outside the official vocabulary: the registry declares it
    init_from: str | None = None  # a new organ's prompt weights start as this organ's when a model adapts


@dataclass
class FolderReport:
    """What ``make_datalist`` found: images per split and what it had to say about the files."""

    counts: dict[str, int]
    sizes: tuple[tuple[int, int], tuple[int, int]] | None = None  # smallest and largest (H, W)
    unreadable: list[str] = field(default_factory=list)  # skipped, each with its error
    empty_masks: list[str] = field(default_factory=list)  # kept: images with no object

    def __str__(self) -> str:
        lines = [f"images per split: {self.counts}"]
        if self.sizes:
            lines.append(f"sizes (H, W) from {self.sizes[0]} to {self.sizes[1]}")
        if self.empty_masks:
            lines.append(f"{len(self.empty_masks)} empty masks (images without the object): " + ", ".join(self.empty_masks))
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} unreadable files skipped: " + "; ".join(self.unreadable))
        return "\n".join(lines)


def make_datalist(
    root: str | Path,
    out: str | Path,
    spec: DatalistSpec,
    registry: str | Path | None = None,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    group_regex: str | None = None,
    groups_csv: str | Path | None = None,
) -> FolderReport:
    """Scan ``root``, split it (seeded, stratified by class, groups kept together) and write ``out``.

    Unreadable images or masks are skipped, each named in the report; empty masks are kept and named.

    Args:
        root: the user's image folder.
        out: datalist JSON to write (paths in it are relative to its folder).
        spec: dataset name, tasks and prompts.
        registry: registry YAML to add (or replace) this dataset's declarations in; created if absent.
        fractions: train / val / test fractions.
        seed: split seed.
        group_regex: a regular expression on the file stem whose first group (or whole match)
            names a group kept in one split (e.g. a patient id).
        groups_csv: instead of ``group_regex``, a CSV file whose first column holds file stems and
            whose ``group`` column names their groups (e.g. a dataset's ``metadata.csv``).

    Returns:
        the report: images per split, sizes, unreadable files and empty masks.
    """
    _check_names(spec)
    out = Path(out)
    scanned = [s for s in scan_folder(root) if not spec.classes or s.class_name in spec.classes]
    scanned, sizes, unreadable, empty = _readable(scanned)
    classes = spec.classes or tuple(sorted({s.class_name for s in scanned if s.class_name is not None}))
    if CLASSIFICATION in spec.tasks:
        unclassed = [str(s.image) for s in scanned if s.class_name is None]
        if unclassed or len(classes) < 2:
            raise ValueError(
                f"classification needs >= 2 class folders under {root}; images outside them: {unclassed[:3]}"
            )
    unmasked = [str(s.image) for s in scanned if not s.masks]
    if SEGMENTATION in spec.tasks and unmasked:
        raise ValueError(f"{len(unmasked)} images have no mask for segmentation, e.g. {unmasked[:3]}")
    merged_dir = out.parent / f"{spec.dataset}_merged_masks"
    mask_of = {s.image: _single_mask(s, Path(root), merged_dir) for s in scanned if s.masks}
    ids = [str(s.image) for s in scanned]
    strata = {str(s.image): s.class_name for s in scanned}
    groups = _groups_from_csv(scanned, groups_csv) if groups_csv is not None else _groups(scanned, group_regex)
    split = split_ids(ids, fractions, seed, strata=strata, groups=groups)
    entries = _entries(scanned, split, spec, classes, mask_of, out.parent)
    write_datalist(out, entries)
    if registry is not None:
        seg_classes = spec.seg_classes or segmentation_classes(mask_values(list(mask_of.values())), spec.object_type)
        new_organ = ({"name": spec.organ, "init_from": spec.init_from} if spec.init_from else spec.organ) if spec.new_organ else None
        update_registry(Path(registry), _declarations(spec, classes, seg_classes), new_organ)
    counts = {name: len(members) for name, members in split.items()}
    extent = (tuple(map(min, zip(*sizes))), tuple(map(max, zip(*sizes)))) if sizes else None
    return FolderReport(counts, extent, unreadable, empty)


def _readable(scanned: Sequence[ScannedImage]) -> tuple[list[ScannedImage], list[tuple[int, int]], list[str], list[str]]:
    """The images whose file and masks load as training loads them, their (H, W), the others named
    with their error, and the empty masks."""
    from bundle.transforms.io import LoadImage2D  # the transforms package imports this one

    load = LoadImage2D()
    kept, sizes, unreadable, empty = [], [], [], []
    for item in scanned:
        try:
            size = tuple(load(item.image).shape[1:])
            masks = [load(mask) for mask in item.masks]
        except (OSError, ValueError) as err:
            unreadable.append(str(err))
            continue
        kept.append(item)
        sizes.append(size)
        if masks and not any(bool(mask.any()) for mask in masks):
            empty.append(str(item.masks[0]))
    return kept, sizes, unreadable, empty


def _groups_from_csv(scanned: Sequence[ScannedImage], path: str | Path) -> dict[str, str]:
    """Image -> group from a CSV whose first column is the file stem and whose ``group`` column the group."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or "group" not in rows[0]:
        raise ValueError(f"groups CSV {path} needs a header with a 'group' column (first column: the file stem)")
    column = rows[0].index("group")
    by_stem = {row[0]: row[column] for row in rows[1:] if len(row) > column}
    missing = [str(s.image) for s in scanned if stem_of(s.image) not in by_stem]
    if missing:
        raise ValueError(f"groups CSV {path} has no row for {len(missing)} images, e.g. {missing[:3]}")
    return {str(s.image): by_stem[stem_of(s.image)] for s in scanned}


def _check_names(spec: DatalistSpec) -> None:
    if spec.new_organ:
        if spec.organ in DEFAULT_VOCABULARY.organs:
            raise ValueError(f"'{spec.organ}' is an official organ: leave out --new-organ")
        if spec.init_from is not None:
            DEFAULT_VOCABULARY.index("position", spec.init_from)
    else:
        try:
            DEFAULT_VOCABULARY.index("position", spec.organ)
        except ValueError as err:
            raise ValueError(f"{err} (a new organ: add --new-organ [--init-from KNOWN_ORGAN])") from None
    if spec.object_type not in OBJECT_TYPES:
        raise ValueError(f"unknown object_type '{spec.object_type}', expected one of {list(OBJECT_TYPES)}")
    unknown = set(spec.tasks) - {SEGMENTATION, CLASSIFICATION}
    if unknown or not spec.tasks:
        raise ValueError(f"unknown task(s) {sorted(unknown)}, expected segmentation and/or classification")


def _single_mask(scanned: ScannedImage, root: Path, merged_dir: Path) -> Path:
    if len(scanned.masks) == 1:
        return scanned.masks[0]
    relative = scanned.image.relative_to(root)
    return merge_masks(scanned.masks, merged_dir / relative.parent / f"{stem_of(scanned.image)}.png")


def _groups(scanned: Sequence[ScannedImage], group_regex: str | None) -> dict[str, str] | None:
    if group_regex is None:
        return None
    pattern = re.compile(group_regex)
    groups = {}
    for s in scanned:
        match = pattern.search(stem_of(s.image))
        if match is None:
            raise ValueError(f"--group-regex '{group_regex}' does not match the file stem of {s.image}")
        groups[str(s.image)] = match.group(1) if pattern.groups else match.group(0)
    return groups


def _entries(
    scanned: Sequence[ScannedImage],
    split: Mapping[str, Sequence[str]],
    spec: DatalistSpec,
    classes: Sequence[str],
    mask_of: Mapping[Path, Path],
    base: Path,
) -> dict[str, list[dict]]:
    def rel(path: Path) -> str:
        return os.path.relpath(path, base)

    by_id = {str(s.image): s for s in scanned}
    entries: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for task in spec.tasks:
        for name, members in split.items():
            for item in members:
                s = by_id[item]
                entry = {"image": rel(s.image), "dataset": spec.dataset, "task": task}
                if task == SEGMENTATION:
                    entry["label"] = rel(mask_of[s.image])
                else:
                    entry["cls_label"] = classes.index(s.class_name)
                    if s.image in mask_of:
                        entry["mask"] = rel(mask_of[s.image])
                entries[name].append(entry)
    return entries


def _declarations(spec: DatalistSpec, classes: Sequence[str], seg_classes: Mapping[str, int]) -> list[dict]:
    common = {"name": spec.dataset, "organ": spec.organ, "object_type": spec.object_type}
    declarations = []
    if SEGMENTATION in spec.tasks:
        declarations.append({**common, "task": SEGMENTATION, "classes": dict(seg_classes)})
    if CLASSIFICATION in spec.tasks:
        declarations.append({**common, "task": CLASSIFICATION, "classes": list(classes)})
    return declarations


def update_registry(path: Path, declarations: Sequence[dict], new_organ: str | dict | None = None) -> None:
    """Add ``declarations`` to the registry at ``path`` (replacing the same name and task), then validate it.

    ``new_organ`` (a name or ``{name, init_from}``) is added to ``extra_organs``, replacing an entry of that name.
    """
    content = yaml.safe_load(path.read_text()) if path.is_file() else {"extra_organs": [], "datasets": []}
    if new_organ is not None:
        name = new_organ["name"] if isinstance(new_organ, dict) else new_organ
        kept = [e for e in content.get("extra_organs") or [] if (e["name"] if isinstance(e, dict) else e) != name]
        content["extra_organs"] = kept + [new_organ]
    replaced = {(d["task"], d["name"]) for d in declarations}
    content["datasets"] = [d for d in content.get("datasets") or [] if (d["task"], d["name"]) not in replaced]
    content["datasets"] += list(declarations)
    previous = path.read_text() if path.is_file() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    try:
        load_registry(path)
    except (ValueError, FileNotFoundError):
        if previous is None:
            path.unlink()
        else:
            path.write_text(previous)
        raise
