"""Fine-tuning on the Label datastore's final labels, through the bundle's own training configs.

The labelled pairs become a one-dataset registry and a MONAI datalist in a work folder; then
``configs/sync.yaml`` (prompt layers only) or ``configs/pretrain.yaml`` (every weight), with the
same override files as inference (e.g. ``configs/cpu.yaml``), runs through ``monai.bundle.run``
starting from the served checkpoint. The best checkpoint of the run (validated on the same
labels) then replaces the served one in a single rename, so a reader never sees half a file.
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

from bundle.label.inference import file_digest
from bundle.prompts import ORGANS, PromptVocabulary

__all__ = ["TRAIN_MODES", "LABEL_DATASET", "LabelFineTuner", "write_training_inputs"]

logger = logging.getLogger(__name__)

TRAIN_MODES: tuple[str, ...] = ("sync", "full")
LABEL_DATASET = "label_datastore"
# The masks a Label client saves, and /infer returns, are 0 / 255 PNGs.
LABEL_CLASSES = {"background": 0, "foreground": 255}


def write_training_inputs(
    pairs: Sequence[Mapping[str, str]], organ: str, object_type: str, vocabulary: PromptVocabulary, folder: Path
) -> tuple[Path, Path]:
    """Registry YAML and datalist JSON of the labelled ``pairs`` (``{"image", "label"}`` paths).

    Every pair is in both the training and the validation list: the best checkpoint is chosen on
    the labels the annotator gave, the only ones there are.

    Returns:
        (registry file, datalist file) inside ``folder``.
    """
    registry = {
        "extra_organs": list(vocabulary.organs[len(ORGANS) :]),
        "datasets": [
            {
                "name": LABEL_DATASET,
                "task": "segmentation",
                "organ": organ,
                "object_type": object_type,
                "classes": LABEL_CLASSES,
            }
        ],
    }
    entries = [
        {
            "image": str(Path(pair["image"]).resolve()),
            "label": str(Path(pair["label"]).resolve()),
            "dataset": LABEL_DATASET,
            "task": "segmentation",
        }
        for pair in pairs
    ]
    registry_file = folder / "datasets.yaml"
    registry_file.write_text(yaml.safe_dump(registry, sort_keys=False))
    datalist_file = folder / "datalist.json"
    datalist_file.write_text(json.dumps({"training": entries, "validation": entries}, indent=1))
    return registry_file, datalist_file


class LabelFineTuner:
    """Runs the bundle's sync or full training on datastore labels and publishes the result.

    Args:
        bundle_root: the bundle folder (``configs/`` inside).
        model_path: the served checkpoint; read as the start point, replaced by the result.
        override_files: config files applied after the training config (as for inference).
        vocabulary: the served model's prompt vocabulary.
        device: training device (config value, e.g. ``"cpu"``); None keeps the config's.
        batch_size: upper bound of the batch size (the label count bounds it too).
    """

    def __init__(
        self,
        bundle_root: Path,
        model_path: Path,
        override_files: Sequence[Path],
        vocabulary: PromptVocabulary,
        device: str | None = None,
        batch_size: int = 8,
    ) -> None:
        self.bundle_root = Path(bundle_root)
        self.model_path = Path(model_path)
        self.override_files = [Path(f) for f in override_files]
        self.vocabulary = vocabulary
        self.device = device
        self.batch_size = batch_size
        self.record = self.model_path.with_name(f"{self.model_path.stem}.label_train.json")

    def config_files(self, mode: str) -> list[Path]:
        """The config files of training ``mode``."""
        if mode not in TRAIN_MODES:
            raise ValueError(f"unknown train mode '{mode}'; allowed: {list(TRAIN_MODES)}")
        first = "sync.yaml" if mode == "sync" else "pretrain.yaml"
        return [self.bundle_root / "configs" / first, *self.override_files]

    def overrides(self, mode: str, epochs: int, labels: int, registry: Path, datalist: Path, work: Path) -> dict[str, Any]:
        """Config ids set for one run (start weights, data, output folders, short schedule)."""
        values: dict[str, Any] = {
            "bundle_root": str(self.bundle_root),
            "dataset_dir": str(work),
            "registry_file": str(registry),
            "datalist": str(datalist),
            "ckpt_dir": str(work / "models"),
            "output_dir": str(work / "runs"),
            "epochs": epochs,
            # validate once, after the last epoch: that saves the run's checkpoint
            "val_interval": epochs,
            "batch_size": min(self.batch_size, labels),
            "val_batch_size": min(self.batch_size, labels),
            "num_workers": 0,
        }
        if self.device is not None:
            values["device"] = f"$torch.device('{self.device}')"
        if mode == "sync":
            values["pretrained_ckpt"] = str(self.model_path)
        else:
            # pretrain.yaml starts from fresh weights; start from the served ones instead
            values["start_ckpt"] = str(self.model_path)
            values["network"] = "$bundle.networks.load_weights(@network_def, @start_ckpt).to(@device)"
        return values

    def run(self, pairs: Sequence[Mapping[str, str]], mode: str, epochs: int, organ: str, object_type: str) -> dict[str, Any]:
        """Train on ``pairs`` and replace the served checkpoint with the result.

        Raises:
            ValueError: no labelled images, an unknown mode or prompt name, or epochs < 1.
        """
        files = self.config_files(mode)
        if not pairs:
            raise ValueError("the datastore has no final labels: save a label (PUT /datastore/label) first")
        if epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {epochs}")
        self.vocabulary.index("position", organ)
        self.vocabulary.index("type", object_type)
        started = time.time()
        before = file_digest(self.model_path)
        with tempfile.TemporaryDirectory(prefix="perceptguide_label_train_") as folder:
            work = Path(folder)
            registry, datalist = write_training_inputs(pairs, organ, object_type, self.vocabulary, work)
            logger.info("%s training, %d epoch(s) on %d labelled image(s)", mode, epochs, len(pairs))
            run_bundle(
                config_file=[str(f) for f in files],
                logging_file=str(self.bundle_root / "configs" / "logging.conf"),
                **self.overrides(mode, epochs, len(pairs), registry, datalist, work),
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
        if not new.is_file():
            raise FileNotFoundError(f"the training run wrote no checkpoint at {new}")
        partial = self.model_path.with_name(f".{self.model_path.name}.partial")
        shutil.copyfile(new, partial)
        os.replace(partial, self.model_path)
        logger.info("published new weights to %s", self.model_path)
