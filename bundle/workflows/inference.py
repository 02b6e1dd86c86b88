"""Inference on a user's images: collect and pre-check the files, write masks, overlays and a CSV.

Resize-back strategy: the seg logits are mapped to the original image size with MONAI's
``Invertd`` through the inverse of the preprocessing (bilinear for logits, then argmax), so the
mask has exactly the input's size and orientation. Samples of a batch that went through the same
preprocessing (the frames of a cine loop, stills of one size) are inverted in one call, their
logits stacked along the channel axis: every inverse step acts on each channel alone.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from PIL import Image
from ignite.engine import Engine, Events
from monai.data import MetaTensor, decollate_batch
from monai.transforms import Compose, Invertd, KeepLargestConnectedComponent
from monai.utils import CommonKeys as Keys

from bundle.data.cine import STILL, expand_cine
from bundle.data.files import INFERENCE_SUFFIXES, NIFTI_SUFFIXES, folder_samples, stem_of
from bundle.flags import as_flag
from bundle.transforms.cleanup import FillEnclosedHoles
from bundle.transforms.io import LoadImage2D, to_unit_range
from bundle.workflows.overlay import overlay, paletted_overlay, save_overlay_video, save_png

__all__ = ["collect_images", "readable_samples", "mask_postprocessing", "PredictionWriter"]

logger = logging.getLogger(__name__)


def collect_images(input_dir: str | Path | None = None, datalist: str | Path | None = None) -> list[dict]:
    """Sample dicts ``{"image": path, ...}`` from a folder of images or a datalist JSON.

    A datalist is a JSON list (or ``{"test": [...]}``) of ``{"image": path}`` items that may carry
    their own prompt names (``organ``, ``object_type``, ``mode``, ``task``); relative paths are
    taken from the datalist's folder.

    Raises:
        FileNotFoundError / ValueError naming the folder or file when there is nothing to read.
    """
    if (input_dir is None) == (datalist is None):
        raise ValueError("give exactly one of input_dir and datalist")
    if input_dir is not None:
        return folder_samples(input_dir, INFERENCE_SUFFIXES)
    path = Path(datalist)
    if not path.is_file():
        raise FileNotFoundError(f"datalist not found: {path}")
    items = json.loads(path.read_text(encoding="utf-8"))
    items = items.get("test", items.get("testing", [])) if isinstance(items, dict) else items
    samples = []
    for item in items:
        if "image" not in item:
            raise ValueError(f"{path}: every item needs an 'image' key, got {item}")
        samples.append({**item, "image": str((path.parent / item["image"]).resolve())})
    if not samples:
        raise ValueError(f"datalist {path} lists no images")
    return samples


def readable_samples(samples: Sequence[dict]) -> list[dict]:
    """The samples whose image loads, a cine loop as one sample per frame (:func:`bundle.data.cine.expand_cine`);
    each image or frame that does not load is logged with its reason and dropped.

    Checking before the run lets a batch run lose only the bad files (or frames) instead of stopping.
    """
    load = LoadImage2D()
    kept, expanded, unopened = [], [], 0
    for sample in samples:
        try:
            expanded += expand_cine([sample])
        except ValueError as err:  # a video that does not open
            logger.error("skipping %s: %s", sample["image"], err)
            unopened += 1
    for sample in expanded:
        try:
            load(sample["image"], sample["frame"])
        except (OSError, ValueError) as err:
            logger.error("skipping %s: %s", sample["image"] if sample["frame"] == STILL else f"frame {sample['frame']}", err)
            continue
        kept.append(sample)
    skipped = unopened + len(expanded) - len(kept)
    if skipped:
        logger.error("%d of %d images could not be read and are skipped", skipped, unopened + len(expanded))
    if not kept:
        raise ValueError("none of the input images could be read (see the errors above)")
    return kept


def mask_postprocessing(
    keep_largest_component: bool | str, fill_holes: bool | str, classes: int | None = None
) -> Compose | None:
    """Clean-up of a class-index mask (1, H, W): each class's largest 8-connected component (MONAI's
    ``KeepLargestConnectedComponent``), holes filled (:class:`~bundle.transforms.cleanup.FillEnclosedHoles`,
    MONAI's ``FillHoles`` in one pass).

    An ultrasound scan shows one fetal head, one thyroid lobe and mostly one breast lesion, so
    stray specks and holes in a predicted object are errors (their effect on the demo test images
    is in docs/results.md). Both steps act on every class > 0 independently.

    Args:
        keep_largest_component: keep only each class's largest component.
        fill_holes: fill each class's enclosed holes.
        classes: the model's segmentation classes, background included: the steps then skip
            finding the labels present in each mask (``torch.unique``, most of their time).

    Returns:
        the transform, or None when both are off.
    """
    steps = []
    labels = list(range(1, classes)) if classes else None
    if as_flag(keep_largest_component, "keep_largest_component"):
        steps.append(KeepLargestConnectedComponent(applied_labels=labels, is_onehot=False, connectivity=2))
    if as_flag(fill_holes, "fill_holes"):
        steps.append(FillEnclosedHoles(applied_labels=labels))
    return Compose(steps) if steps else None


def same_trace(first: Any, second: Any) -> bool:
    """Whether two transform traces (``MetaTensor.applied_operations``: lists and dicts of numbers,
    strings, tuples, tensors and arrays) are equal, item by item."""
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(same_trace(first[key], second[key]) for key in first)
    if isinstance(first, (list, tuple)) and isinstance(second, (list, tuple)):
        return len(first) == len(second) and all(same_trace(a, b) for a, b in zip(first, second))
    if isinstance(first, (torch.Tensor, np.ndarray)) or isinstance(second, (torch.Tensor, np.ndarray)):
        return np.array_equal(np.asarray(first), np.asarray(second))
    return type(first) is type(second) and first == second


class PredictionWriter:
    """Writes, per image, the mask at its original size, an overlay, and one ``predictions.csv``.

    Outputs in ``output_dir``: ``<stem>.png`` (or ``<stem>.nii.gz`` for NIfTI input) with 0/255
    for a binary model and class indices otherwise, ``<stem>_overlay.png``, and
    ``predictions.csv`` with columns file, ``p_<class>`` per classification class and
    ``foreground_pixels``. A cine loop (frames of one file, :mod:`bundle.data.cine`) gives one
    ``<stem>.nii.gz`` mask volume of the input's shape (and, for NIfTI, affine), voxel (i, j, t)
    labelling input voxel (i, j, t) (a frame that could not be read stays 0), an overlay video
    ``<stem>_overlay.mp4`` (an animated ``.gif`` without OpenCV), and a CSV row per frame (a ``frame`` column); the log gives the frames
    per second of the run.

    Args:
        output_dir: destination folder.
        preprocessing: the inference transform chain (its inverse maps logits back).
        class_names: classification class names, in logit order.
        postprocessing: applied to each class-index mask (1, H, W) at the original size before
            it is written (``mask_postprocessing``); None writes the argmax as it is.
    """

    def __init__(
        self,
        output_dir: str | Path,
        preprocessing: Compose,
        class_names: Sequence[str],
        postprocessing: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.postprocessing = postprocessing
        self.invert = Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=False)
        self.class_names = list(class_names)
        self.rows: list[dict] = []
        self.loops: dict[Path, dict] = {}  # cine source -> {"frames": T, "masks": {t: mask}, "overlays": {t: picture}}
        self.classes = 2
        self.load = LoadImage2D()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: (self.rows.clear(), self.loops.clear()))
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.write_batch)
        engine.add_event_handler(Events.COMPLETED, self.write_table)

    def write_batch(self, engine: Engine) -> None:
        seg_logits, cls_logits = engine.state.output[Keys.PRED]
        self.classes = seg_logits.shape[1]
        probabilities = torch.softmax(cls_logits.float(), 1).cpu()
        samples = decollate_batch(engine.state.batch)
        original_logits = self.invert_grouped([sample["image"] for sample in samples], seg_logits.detach().cpu())
        for i, (sample, logits) in enumerate(zip(samples, original_logits)):
            image = sample["image"]
            # max's indices: argmax over a leading dim of two classes took ~9 ms per 256² frame, max 0.4
            mask = logits.max(0, keepdim=True).indices.to(torch.uint8)
            if self.postprocessing is not None:
                mask = torch.as_tensor(self.postprocessing(mask))
            mask = mask[0].numpy().astype(np.uint8)
            source = Path(str(image.meta["filename_or_obj"]))
            frame = int(image.meta.get("frame", STILL))
            original = to_unit_range(self.load(source, frame)).numpy()
            if frame == STILL:
                self._write_mask(mask, source)
                save_png(overlay(original, mask), self.output_dir / f"{stem_of(source)}_overlay.png")
                row = {"file": source.name}
            else:
                loop = self.loops.setdefault(source, {"frames": int(image.meta["frames"]), "masks": {}, "overlays": {}})
                loop["masks"][frame] = mask
                loop["overlays"][frame] = (
                    paletted_overlay(original, mask, self.classes) if original.shape[0] == 1 else Image.fromarray(overlay(original, mask))
                )
                row = {"file": source.name, "frame": frame}
            row.update({f"p_{name}": round(float(p), 6) for name, p in zip(self.class_names, probabilities[i])})
            row["foreground_pixels"] = int((mask > 0).sum())
            self.rows.append(row)

    def invert_grouped(self, images: Sequence[MetaTensor], seg_logits: torch.Tensor) -> list[torch.Tensor]:
        """Each sample's seg logits at its original size: ``seg_logits`` (B, K, h, w) -> B of (K, H_i, W_i).

        Samples with the same preprocessing trace are inverted together, as one (k·K, h, w) map."""
        groups: list[list[int]] = []
        for index, image in enumerate(images):
            group = next((g for g in groups if same_trace(images[g[0]].applied_operations, image.applied_operations)), None)
            if group is None:
                groups.append([index])
            else:
                group.append(index)
        inverted: list[torch.Tensor] = [None] * len(images)
        classes = seg_logits.shape[1]
        for group in groups:
            stacked = MetaTensor(seg_logits[group].flatten(0, 1))
            logits = self.invert({"image": images[group[0]], "pred": stacked})["pred"].as_subclass(torch.Tensor)
            for index, chunk in zip(group, logits.unflatten(0, (len(group), classes))):
                inverted[index] = chunk
        return inverted

    def _file_values(self, mask: np.ndarray) -> np.ndarray:
        """A class-index mask as the files store it: 0/255 for a binary model, class indices otherwise."""
        return (mask * 255 if self.classes == 2 else mask).astype(np.uint8)

    def _save_nifti(self, values: np.ndarray, source: Path) -> None:
        """``<stem>.nii.gz`` of ``values`` with the affine of ``source`` (identity when it is not NIfTI)."""
        affine = nib.load(str(source)).affine if source.name.lower().endswith(NIFTI_SUFFIXES) else np.eye(4)
        nib.save(nib.Nifti1Image(values, affine), self.output_dir / f"{stem_of(source)}.nii.gz")

    def _write_mask(self, mask: np.ndarray, source: Path) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if source.name.lower().endswith(NIFTI_SUFFIXES):
            self._save_nifti(self._file_values(mask), source)
        else:
            save_png(self._file_values(mask), self.output_dir / f"{stem_of(source)}.png")

    def _write_loop(self, source: Path, loop: dict) -> None:
        """The loop's mask volume (H, W, T) and its animated overlay."""
        first = next(iter(loop["masks"].values()))
        volume = np.zeros((*first.shape, loop["frames"]), np.uint8)
        for frame, mask in loop["masks"].items():
            volume[..., frame] = self._file_values(mask)
        missing = sorted(set(range(loop["frames"])) - set(loop["masks"]))
        if missing:
            logger.error("%s: frames %s could not be read; they are 0 in the mask volume", source, missing)
        self._save_nifti(volume, source)
        save_overlay_video([loop["overlays"][t] for t in sorted(loop["overlays"])], self.output_dir / stem_of(source))

    def write_table(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for source, loop in self.loops.items():
            self._write_loop(source, loop)
        path = self.output_dir / "predictions.csv"
        frame_column = ["frame"] if self.loops else []
        fields = ["file", *frame_column, *[f"p_{name}" for name in self.class_names], "foreground_pixels"]
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(sorted(self.rows, key=lambda row: (row["file"], row.get("frame", STILL))))
        seconds = engine.state.times.get(Events.EPOCH_COMPLETED.name)
        rate = f", {len(self.rows) / seconds:.1f} {'frames' if self.loops else 'images'}/s" if seconds else ""
        logger.info("wrote %d masks, overlays and %s%s", len(self.rows), path, rate)
