"""One image through the bundle's inference config, for the app's infer task.

Nothing is re-implemented here: each request runs the evaluator of ``configs/inference.yaml``,
the one ``python -m monai.bundle run`` runs, on a one-image datalist, and reads back what it
wrote: the mask at the image's original size and the row of ``predictions.csv``. The network,
its prompt vocabulary and class names come from the served checkpoint alone
(:func:`bundle.networks.read_checkpoint`). The network is kept between requests (building it
costs more than the image) and rebuilt whenever the checkpoint file changes, so weights a
training run publishes are used by the next request.

This module needs only the bundle's dependencies, not MONAI Label.
"""

from __future__ import annotations

import copy
import csv
import glob
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from bundle.data.files import stem_of
from bundle.flags import as_flag
from bundle.hashing import file_digest
from bundle.networks import BundleCheckpoint, read_checkpoint
from bundle.workflows.runtimes import runtime_network
from bundle.prompts import PROMPT_NAME_KEYS, PromptVocabulary
from bundle.transforms import LoadImage2D

__all__ = ["POSTPROCESSING_KEYS", "PROMPT_NAMES", "RUNTIME_KEYS", "BundleInference", "Prediction", "RequestError"]

logger = logging.getLogger(__name__)

# the prompt names a request may give (keys of bundle.prompts.PROMPT_NAME_KEYS); the task is segmentation
PROMPT_NAMES: tuple[str, ...] = ("organ", "object_type", "mode")
# inference.yaml's switches of the mask clean-up, which an app may set (true / false)
POSTPROCESSING_KEYS: tuple[str, ...] = ("keep_largest_component", "fill_holes")
# inference.yaml's runtime choices (bundle.workflows.runtimes) and test-time flip (its inferer), which an app may set
RUNTIME_KEYS: tuple[str, ...] = ("backend", "quantize", "num_threads", "onnx_spinning", "test_time_flip")
# the on/off ones among them, read by bundle.flags.as_flag
RUNTIME_SWITCHES: tuple[str, ...] = ("onnx_spinning", "test_time_flip")


def runtime_value(key: str, value: Any) -> Any:
    """A runtime option given as text (``--conf num_threads 2``) as the config holds it.

    Raises:
        ValueError: a ``RUNTIME_SWITCHES`` key whose value is not an on/off switch (``bundle.flags.as_flag``).
    """
    if key == "num_threads":
        return int(value)
    if key in RUNTIME_SWITCHES:
        return as_flag(value, key)
    return value


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
        probabilities: classification probability by the checkpoint's class names.
        foreground_pixels: mask pixels > 0.
        prompts: the prompt names used, by request name (``organ``, ``object_type``, ``mode``).
        weights: sha256 of the checkpoint that made it.
    """

    mask: Path
    probabilities: dict[str, float]
    foreground_pixels: int
    prompts: dict[str, str]
    weights: str


@dataclass(frozen=True)
class _Served:
    """The checkpoint being served, its network, and the file state they were read from."""

    checkpoint: BundleCheckpoint
    network: torch.nn.Module
    stamp: tuple[int, int, int]
    digest: str


class BundleInference:
    """The bundle's inference config over one checkpoint, run on one image at a time (thread-safe).

    Args:
        bundle_root: the bundle folder (``configs/inference.yaml`` inside).
        model_path: the checkpoint to serve (any bundle checkpoint: it describes its network).
        device: e.g. ``"cpu"`` or ``"cuda:0"``; None keeps the config's choice.
        defaults: prompt names used when a request gives none (request name -> prompt name);
            names not given here come from the config's ``organ`` / ``object_type`` / ``mode``.
        runtime: inference.yaml's ``backend``, ``quantize``, ``num_threads``, ``onnx_spinning`` and
            ``test_time_flip`` (``RUNTIME_KEYS``), e.g. ``{"backend": "onnxruntime"}``.
        postprocessing: values of the config's mask clean-up switches (``POSTPROCESSING_KEYS``,
            ``"true"`` / ``"false"``); those not given keep the config's.

    Raises:
        FileNotFoundError: no checkpoint at ``model_path``.
        ValueError: a checkpoint that cannot be served (e.g. an encoder only), or a default
            prompt name its vocabulary does not have (a :class:`RequestError`).
    """

    def __init__(
        self,
        bundle_root: str | Path,
        model_path: str | Path,
        device: str | None = None,
        defaults: Mapping[str, str] | None = None,
        postprocessing: Mapping[str, str] | None = None,
        runtime: Mapping[str, str] | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        unknown = set(postprocessing or {}) - set(POSTPROCESSING_KEYS)
        if unknown:
            raise ValueError(f"unknown post-processing switches {sorted(unknown)}, expected some of {list(POSTPROCESSING_KEYS)}")
        unknown = set(runtime or {}) - set(RUNTIME_KEYS)
        if unknown:
            raise ValueError(f"unknown runtime options {sorted(unknown)}, expected some of {list(RUNTIME_KEYS)}")
        parser = ConfigParser()
        parser.read_config(str(Path(bundle_root) / "configs" / "inference.yaml"))
        parser.update({"bundle_root": str(bundle_root), "ckpt_path": str(self.model_path), "num_workers": 0})
        parser.update(dict(postprocessing or {}))
        parser.update({key: runtime_value(key, value) for key, value in (runtime or {}).items()})
        self._runtime = {key: parser.get_parsed_content(key) for key in RUNTIME_KEYS}
        if device:
            parser["device"] = f"$torch.device('{device}')"
        self._config = parser.get()
        self._device: torch.device = parser.get_parsed_content("device")
        self._lock = threading.Lock()
        self._served: _Served | None = None
        self._current()
        self.defaults = {name: str(parser.get_parsed_content(name)) for name in PROMPT_NAMES}
        self.defaults.update({name: str(value) for name, value in (defaults or {}).items() if value})
        self.check_prompts(self.defaults)

    @property
    def checkpoint(self) -> BundleCheckpoint:
        """The checkpoint the last request (or the start) read."""
        assert self._served is not None
        return self._served.checkpoint

    @property
    def vocabulary(self) -> PromptVocabulary:
        """The served model's prompt vocabulary."""
        return self.checkpoint.description.prompt_vocabulary

    @property
    def class_names(self) -> list[str]:
        """The served model's classification class names, in logit order."""
        return list(self.checkpoint.description.cls_classes)

    @property
    def seg_classes(self) -> list[str]:
        """The served model's segmentation class names by channel (0: the background)."""
        return list(self.checkpoint.description.seg_classes)

    def allowed(self, name: str) -> list[str]:
        """Allowed values of request prompt ``name`` (``organ``, ``object_type`` or ``mode``)."""
        return list(self.vocabulary.names(PROMPT_NAME_KEYS[name]))

    def check_prompts(self, prompts: Mapping[str, str]) -> None:
        """Raise :class:`RequestError` (422) naming the allowed values for a prompt name the model lacks."""
        try:
            self.checkpoint.check_prompts(**{name: prompts[name] for name in PROMPT_NAMES if name in prompts})
        except ValueError as err:
            raise RequestError(422, str(err)) from None

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
        image = Path(image)
        try:
            LoadImage2D()(image)
        except (OSError, ValueError) as err:
            raise RequestError(422, f"cannot read image {image.name}: {err}") from None
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        output_dir = work_dir / "out"
        with self._lock:
            served = self._current()
            prompts = self.prompts_for(params)
            datalist = work_dir / "datalist.json"
            datalist.write_text(json.dumps([{"image": str(image.resolve()), **prompts}]))
            parser = ConfigParser(copy.deepcopy(self._config))
            parser.update({"datalist": str(datalist), "input_dir": None, "output_dir": str(output_dir)})
            # the objects read once per checkpoint file, instead of the config's reading them again
            parser["checkpoint"] = served.checkpoint
            parser["network"] = served.network
            parser.get_parsed_content("evaluator").run()
        mask = next(output_dir.glob(f"{glob.escape(stem_of(image))}.*"))
        with open(output_dir / "predictions.csv", newline="", encoding="utf-8") as handle:
            row = next(csv.DictReader(handle))
        probabilities = {name: float(row[f"p_{name}"]) for name in served.checkpoint.description.cls_classes}
        return Prediction(mask, probabilities, int(row["foreground_pixels"]), prompts, served.digest)

    def _current(self) -> _Served:
        """The served checkpoint and network, read again when the checkpoint file has changed."""
        stat = self.model_path.stat()
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if self._served is None or self._served.stamp != stamp:
            checkpoint = read_checkpoint(self.model_path)
            runtime = self._runtime
            network = runtime_network(
                checkpoint.build(), runtime["backend"], self.model_path, checkpoint.description.image_size,
                runtime["num_threads"], runtime["quantize"], runtime["onnx_spinning"],
            ).to(self._device)  # fmt: skip
            self._served = _Served(checkpoint, network, stamp, file_digest(self.model_path))
            logger.info("serving %s (sha256 %s)", self.model_path, self._served.digest[:12])
        return self._served
