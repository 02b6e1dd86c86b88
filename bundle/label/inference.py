"""One image through the bundle's own inference config, for the Label app's infer task.

Nothing is re-implemented here: each request runs the evaluator of ``configs/inference.yaml``
(plus any override files, e.g. ``configs/cpu.yaml``), the one ``python -m monai.bundle run``
runs, on a one-image datalist, and reads back what it wrote: the mask at the image's original
size and the row of ``predictions.csv``. Only the network is kept between requests (building it costs more
than the image); its weights are reloaded whenever the checkpoint file changes, so weights a
training run writes are used by the next request.
"""

from __future__ import annotations

import copy
import csv
import glob
import hashlib
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from bundle.data.files import stem_of
from bundle.networks import load_weights
from bundle.prompts import PromptVocabulary
from bundle.transforms import LoadImage2D

__all__ = ["PROMPT_NAMES", "BundleInference", "Prediction", "RequestError", "file_digest"]

logger = logging.getLogger(__name__)

# request / config name -> prompt key of bundle.prompts
PROMPT_NAMES: dict[str, str] = {"organ": "position", "object_type": "type", "mode": "mode"}


class RequestError(ValueError):
    """A request its sender can fix (unknown image, prompt name or unreadable file).

    Args:
        status: the HTTP status that fits (404 unknown image, 422 bad prompt or image content).
        message: says what was wrong and, for names, which ones are allowed.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Prediction:
    """What one inference request produced.

    Attributes:
        mask: the mask file the bundle wrote: the image's exact size, 0/255 for a binary model,
            class indices otherwise (PNG; NIfTI for NIfTI input).
        probabilities: classification probability by class name (they sum to 1).
        foreground_pixels: mask pixels > 0.
        prompts: the prompt names used, by request name (``organ``, ``object_type``, ``mode``).
        weights: sha256 of the checkpoint that made it.
    """

    mask: Path
    probabilities: dict[str, float]
    foreground_pixels: int
    prompts: dict[str, str]
    weights: str


def file_digest(path: Path) -> str:
    """sha256 hex digest of a file."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class BundleInference:
    """The bundle's inference config, ready to run on one image at a time (thread-safe).

    Args:
        config_files: ``configs/inference.yaml`` first, then override files (later wins).
        model_path: the checkpoint to serve (``models/model.pt``).
        overrides: config ids to set, e.g. ``{"bundle_root": ..., "device": "cpu"}``.
        defaults: prompt names used when a request gives none (request name -> prompt name);
            names not given here come from the config's ``organ`` / ``object_type`` / ``mode``.

    Raises:
        ValueError: a default prompt name the model's vocabulary does not have.
    """

    def __init__(
        self,
        config_files: Sequence[str | Path],
        model_path: str | Path,
        overrides: Mapping[str, Any] | None = None,
        defaults: Mapping[str, str] | None = None,
    ) -> None:
        parser = ConfigParser()
        parser.read_config([str(f) for f in config_files])
        parser.update({**(overrides or {}), "ckpt_path": str(model_path)})
        self._config = parser.get()
        self.model_path = Path(model_path)
        self.vocabulary: PromptVocabulary = parser.get_parsed_content("vocabulary")
        self.class_names: list[str] = list(parser.get_parsed_content("class_names"))
        self.seg_classes = int(parser.get_parsed_content("seg_classes"))
        self.defaults = {name: str(parser.get_parsed_content(name)) for name in PROMPT_NAMES}
        self.defaults.update({k: str(v) for k, v in (defaults or {}).items() if v})
        self.check_prompts(self.defaults)
        self._lock = threading.Lock()
        self._network: torch.nn.Module | None = None
        self._loaded: tuple[int, int, int] | None = None
        self._weights = ""

    def allowed(self, name: str) -> list[str]:
        """Allowed values of request prompt ``name`` (``organ``, ``object_type`` or ``mode``)."""
        return list(self.vocabulary.names(PROMPT_NAMES[name]))

    def check_prompts(self, prompts: Mapping[str, str]) -> None:
        """Raise :class:`RequestError` (422) naming the allowed values for an unknown prompt name."""
        for name, value in prompts.items():
            if name in PROMPT_NAMES and value not in self.allowed(name):
                raise RequestError(422, f"unknown {name} '{value}'; allowed: {self.allowed(name)}")

    def prompts_for(self, params: Mapping[str, Any]) -> dict[str, str]:
        """Prompt names of a request: its own ``organ`` / ``object_type`` / ``mode``, else the defaults."""
        prompts = {name: str(params.get(name) or self.defaults[name]) for name in PROMPT_NAMES}
        self.check_prompts(prompts)
        return prompts

    def predict(self, image: str | Path, params: Mapping[str, Any], work_dir: str | Path) -> Prediction:
        """Run the inference config on ``image`` with the request's prompts, writing into ``work_dir``.

        Raises:
            RequestError: unknown prompt name (422) or an image the bundle cannot read (422).
        """
        prompts = self.prompts_for(params)
        image = Path(image)
        try:
            LoadImage2D()(image)
        except (OSError, ValueError) as err:
            raise RequestError(422, f"cannot read image {image.name}: {err}") from None
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        datalist = work_dir / "datalist.json"
        datalist.write_text(json.dumps([{"image": str(image.resolve()), **prompts}]))
        output_dir = work_dir / "out"
        with self._lock:
            network = self._current_network()
            parser = ConfigParser(copy.deepcopy(self._config))
            parser.update({"datalist": str(datalist), "input_dir": None, "output_dir": str(output_dir)})
            parser["network"] = network
            parser.get_parsed_content("evaluator").run()
            weights = self._weights
        mask = next(output_dir.glob(f"{glob.escape(stem_of(image))}.*"))
        with open(output_dir / "predictions.csv", newline="", encoding="utf-8") as handle:
            row = next(csv.DictReader(handle))
        probabilities = {name: float(row[f"p_{name}"]) for name in self.class_names}
        return Prediction(mask, probabilities, int(row["foreground_pixels"]), prompts, weights)

    def _current_network(self) -> torch.nn.Module:
        """The served network, its weights (re)loaded when the checkpoint file has changed."""
        stat = self.model_path.stat()
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if self._network is None:
            parser = ConfigParser(copy.deepcopy(self._config))
            self._network = parser.get_parsed_content("network_def").to(parser.get_parsed_content("device")).eval()
        if stamp != self._loaded:
            load_weights(self._network, self.model_path)
            self._loaded = stamp
            self._weights = file_digest(self.model_path)
            logger.info("serving weights %s (sha256 %s)", self.model_path, self._weights[:12])
        return self._network
