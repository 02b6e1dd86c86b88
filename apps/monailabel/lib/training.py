"""Training on the Label datastore's final labels, through the bundle's own adaptation stages.

The labelled pairs become a one-dataset registry and a MONAI datalist in a work folder; then
the sync stage (``['configs/pretrain.yaml','configs/sync.yaml']``, prompt projections only) or
the fine-tuning stage (``['configs/pretrain.yaml','configs/finetune.yaml']``, every weight)
runs through ``monai.bundle.run`` with ``init_ckpt`` = the served checkpoint, which gives the
network, vocabulary, classes and input size. Only data, output and schedule-length values are
set. The stage's ``model.pt`` (self-describing, validated on the same labels) then replaces the
served checkpoint in a single rename, so a reader never sees half a file.

This module needs only the bundle's dependencies, not MONAI Label.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from monai.bundle import run as run_bundle

from bundle.hashing import file_digest
from bundle.networks import ModelDescription, read_checkpoint
from bundle.prompts import ORGANS, SEGMENTATION

__all__ = ["LABEL_DATASET", "STAGES", "TRAIN_MODES", "LabelFineTuner", "label_classes", "write_training_inputs"]

logger = logging.getLogger(__name__)

# train mode -> the override file layered on configs/pretrain.yaml
STAGES: dict[str, str] = {"sync": "sync.yaml", "full": "finetune.yaml"}
TRAIN_MODES: tuple[str, ...] = tuple(STAGES)
LABEL_DATASET = "label_datastore"


def label_classes(seg_classes: Sequence[str]) -> dict[str, int]:
    """Class name -> value in the label files, as ``/infer`` writes masks: 0/255 for a binary
    model, the class index otherwise."""
    if len(seg_classes) == 2:
        return {seg_classes[0]: 0, seg_classes[1]: 255}
    return {name: index for index, name in enumerate(seg_classes)}


def write_training_inputs(
    pairs: Sequence[Mapping[str, str]], organ: str, object_type: str, description: ModelDescription, folder: Path
) -> tuple[Path, Path]:
    """Registry YAML and datalist JSON of the labelled ``pairs`` (``{"image", "label"}`` paths).

    The registry declares the served model's extra organs and segmentation classes. Every pair
    is in both the training and the validation list: the checkpoint is validated on the labels
    the annotator gave, the only ones there are.

    Returns:
        (registry file, datalist file) inside ``folder``.
    """
    registry = {
        "extra_organs": [name for name in description.vocabulary["position"] if name not in ORGANS],
        "datasets": [
            {
                "name": LABEL_DATASET,
                "task": SEGMENTATION,
                "organ": organ,
                "object_type": object_type,
                "classes": label_classes(description.seg_classes),
            }
        ],
    }
    entries = [
        {
            "image": str(Path(pair["image"]).resolve()),
            "label": str(Path(pair["label"]).resolve()),
            "dataset": LABEL_DATASET,
            "task": SEGMENTATION,
        }
        for pair in pairs
    ]
    registry_file = folder / "datasets.yaml"
    registry_file.write_text(yaml.safe_dump(registry, sort_keys=False))
    datalist_file = folder / "datalist.json"
    datalist_file.write_text(json.dumps({"training": entries, "validation": entries}, indent=1))
    return registry_file, datalist_file


class LabelFineTuner:
    """Runs the sync or fine-tuning stage on datastore labels and publishes its checkpoint.

    Args:
        bundle_root: the bundle folder (``configs/`` inside).
        model_path: the served checkpoint; the stage's ``init_ckpt``, replaced by its result.
        device: training device (e.g. ``"cpu"``); None keeps the config's choice.
        batch_size: upper bound of the batch size (the label count bounds it too: the
            training loader drops an incomplete last batch).
    """

    def __init__(self, bundle_root: str | Path, model_path: str | Path, device: str | None = None, batch_size: int = 8) -> None:
        self.bundle_root = Path(bundle_root)
        self.model_path = Path(model_path)
        self.device = device
        self.batch_size = batch_size
        self.record = self.model_path.with_name(f"{self.model_path.stem}.label_train.json")

    def config_files(self, mode: str) -> list[Path]:
        """The config files of training ``mode``: pretrain.yaml and the stage's override."""
        if mode not in STAGES:
            raise ValueError(f"unknown train mode '{mode}'; allowed: {list(TRAIN_MODES)}")
        return [self.bundle_root / "configs" / "pretrain.yaml", self.bundle_root / "configs" / STAGES[mode]]

    def overrides(self, epochs: int, labels: int, registry: Path, datalist: Path, work: Path) -> dict[str, Any]:
        """Config ids set for one run: start checkpoint, data, output folders and schedule length."""
        values: dict[str, Any] = {
            "bundle_root": str(self.bundle_root),
            "init_ckpt": str(self.model_path),
            "dataset_dir": str(work),
            "registry_file": str(registry),
            "datalist": str(datalist),
            "ckpt_dir": str(work / "models"),
            "output_dir": str(work / "runs"),
            "epochs": epochs,
            # validate once, after the last epoch: that writes the stage's model.pt
            "val_interval": epochs,
            "batch_size": min(self.batch_size, labels),
            "val_batch_size": min(self.batch_size, labels),
            "num_workers": 0,
        }
        if self.device is not None:
            values["device"] = f"$torch.device('{self.device}')"
        return values

    def run(self, pairs: Sequence[Mapping[str, str]], mode: str, epochs: int, organ: str, object_type: str) -> dict[str, Any]:
        """Train on ``pairs`` and replace the served checkpoint with the result.

        Raises:
            ValueError: no labelled images, an unknown mode, a prompt name the served model
                lacks, or epochs < 1.
        """
        files = self.config_files(mode)
        if not pairs:
            raise ValueError("the datastore has no final labels: save a label (PUT /datastore/label) first")
        if epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {epochs}")
        served = read_checkpoint(self.model_path)
        served.check_prompts(organ=organ, object_type=object_type)
        started = time.time()
        before = file_digest(self.model_path)
        with tempfile.TemporaryDirectory(prefix="perceptguide_label_train_") as folder:
            work = Path(folder)
            registry, datalist = write_training_inputs(pairs, organ, object_type, served.description, work)
            logger.info("%s training, %d epoch(s) on %d labelled image(s)", mode, epochs, len(pairs))
            run_bundle(
                config_file=[str(f) for f in files],
                meta_file=str(self.bundle_root / "configs" / "metadata.json"),
                logging_file=str(self.bundle_root / "configs" / "logging.conf"),
                **self.overrides(epochs, len(pairs), registry, datalist, work),
            )
            self._publish(work / "models" / "model.pt")
        result = {
            "mode": mode,
            "epochs": epochs,
            "labels": len(pairs),
            "seconds": round(time.time() - started, 1),
            "weights_before": before,
            "weights": file_digest(self.model_path),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self.record.write_text(json.dumps(result, indent=1))
        logger.info("training done: %s", result)
        return result

    def last_run(self) -> dict[str, Any]:
        """The summary of the last training run on this checkpoint, or {} if there was none."""
        return json.loads(self.record.read_text()) if self.record.is_file() else {}

    def _publish(self, new: Path) -> None:
        """Replace the served checkpoint with ``new`` in one rename, once it reads as a checkpoint."""
        if not new.is_file():
            raise FileNotFoundError(f"the training run wrote no checkpoint at {new}")
        read_checkpoint(new)
        partial = self.model_path.with_name(f".{self.model_path.name}.partial")
        shutil.copyfile(new, partial)
        os.replace(partial, self.model_path)
        logger.info("published new weights to %s", self.model_path)
