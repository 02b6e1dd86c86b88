"""MONAI Label infer and train tasks: request in, bundle run, response out.

The work is in :mod:`bundle.label.inference` and :mod:`bundle.label.training`; these classes
only translate between MONAI Label requests and those, and turn a request its sender can fix
into an HTTP 4xx that names the cause (the server stays up).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.train import TrainTask

from bundle.label.inference import PROMPT_NAMES, BundleInference, RequestError
from bundle.label.training import TRAIN_MODES, LabelFineTuner

__all__ = ["PerceptGuideInfer", "PerceptGuideTrain"]

logger = logging.getLogger(__name__)


class PerceptGuideInfer(InferTask):
    """2D segmentation (and classification probabilities) of one datastore image.

    Request params ``organ``, ``object_type`` and ``mode`` choose the prompts by name. The
    result file is the mask at the image's exact size; the result JSON carries the prompts used,
    ``probabilities`` by class name, ``foreground_pixels`` and the ``weights`` checksum.
    """

    def __init__(self, inference: BundleInference) -> None:
        # class 1 of a binary model is whatever the prompts ask for (a tumor, an organ, ...)
        labels = {"foreground": 1} if inference.seg_classes == 2 else {f"class_{i}": i for i in range(1, inference.seg_classes)}
        options = {**inference.defaults, **{f"allowed_{name}": inference.allowed(name) for name in PROMPT_NAMES}}
        super().__init__(
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=2,
            description="PerceptGuide prompt-guided ultrasound segmentation and classification",
            config=options,
        )
        self.inference = inference

    def is_valid(self) -> bool:
        return self.inference.model_path.is_file()

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        work_dir = Path(tempfile.mkdtemp(prefix="perceptguide_infer_"))
        try:
            prediction = self.inference.predict(request["image"], request, work_dir)
            # MONAI Label deletes the result file once sent, so it lives outside the work dir.
            handle, result = tempfile.mkstemp(suffix="".join(prediction.mask.suffixes))
            os.close(handle)
            shutil.move(prediction.mask, result)
        except RequestError as err:
            raise HTTPException(status_code=err.status, detail=str(err)) from None
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        return result, {
            **prediction.prompts,
            "probabilities": prediction.probabilities,
            "foreground_pixels": prediction.foreground_pixels,
            "labels": self.labels,
            "weights": prediction.weights,
        }


class PerceptGuideTrain(TrainTask):
    """Fine-tunes the served weights on the datastore's final labels.

    Request params: ``mode`` (``sync``: prompt layers only, the default; ``full``: every
    weight), ``max_epochs`` (default 1), ``organ`` / ``object_type`` (the labels' prompts,
    default the app's). The new weights replace the served checkpoint, so the next /infer uses
    them; progress lines go to the server's train status.
    """

    def __init__(self, tuner: LabelFineTuner, defaults: dict[str, str]) -> None:
        super().__init__("Fine-tune PerceptGuide on the datastore's final labels (sync or full)")
        self.tuner = tuner
        self.defaults = defaults

    def config(self) -> dict[str, Any]:
        return {"mode": TRAIN_MODES[0], "allowed_mode": list(TRAIN_MODES), "max_epochs": 1, **self.defaults}

    def stats(self) -> dict[str, Any]:
        return self.tuner.last_run()

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        pairs = datastore.datalist()
        logger.info("training on %d labelled images of the datastore", len(pairs))
        return self.tuner.run(
            pairs,
            mode=str(request.get("mode", TRAIN_MODES[0])),
            epochs=int(request.get("max_epochs", 1)),
            organ=str(request.get("organ") or self.defaults["organ"]),
            object_type=str(request.get("object_type") or self.defaults["object_type"]),
        )
