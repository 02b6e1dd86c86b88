"""MONAI Label infer task: request in, one run of the bundle's inference config, response out.

The work is in :mod:`..inference`; this class only translates between MONAI Label requests and
it, and turns a request its sender can fix into an HTTP 4xx that names the cause (the server
stays up).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from ..inference import PROMPT_NAMES, BundleInference, RequestError

__all__ = ["PerceptGuideInfer"]


class PerceptGuideInfer(InferTask):
    """2D segmentation (and classification probabilities) of one datastore image.

    Request params ``organ``, ``object_type`` and ``mode`` choose the prompts by name. The
    result file is the mask at the image's exact size; the result JSON carries the prompts used,
    ``probabilities`` by class name, ``foreground_pixels`` and the ``weights`` checksum.

    Args:
        inference: the served checkpoint through the bundle's inference config.
    """

    def __init__(self, inference: BundleInference) -> None:
        classes = inference.seg_classes
        # class 1 of a binary model is whatever the prompts ask for (a tumor, an organ, ...)
        labels = {"foreground": 1} if len(classes) == 2 else {name: index for index, name in enumerate(classes) if index}
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
