"""MONAI Label app serving this bundle: ``monailabel start_server --app apps/monailabel ...``.

Start it with ``scripts/label_server.sh STUDIES_DIR PORT`` (docs/label.md). The served model is
built from its checkpoint alone: network, prompt vocabulary, class names and input size. App
options, given as ``--conf KEY VALUE`` (all optional):

- ``model_path``: checkpoint to serve and train; any bundle checkpoint. Default
  ``<bundle>/models/model.pt``, the adapted model ``make demo`` leaves; without one, a copy of the
  shipped ``models/pretrained.pt`` is made there, so that training never overwrites the shipped weights.
- ``organ``, ``object_type``, ``mode``: default prompt names (else those of
  ``configs/inference.yaml``).
- ``device``: e.g. ``cpu`` or ``cuda:0`` (default: the configs' choice).
- ``keep_largest_component``, ``fill_holes``: ``true`` / ``false``, the clean-up of served masks
  (default: that of ``configs/inference.yaml``, both on).
- ``backend`` (``auto`` / ``torch`` / ``onnxruntime``), ``quantize`` (``none`` / ``int8``, onnxruntime only),
  ``num_threads``, ``onnx_spinning`` (``true`` / ``false``), ``test_time_flip`` (``true`` / ``false``: the
  mirrored image too, the two views averaged): how the served network runs (default: that of
  ``configs/inference.yaml``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from lib.inference import POSTPROCESSING_KEYS, PROMPT_NAMES, RUNTIME_KEYS, BundleInference
from lib.infers import PerceptGuideInfer
from lib.trainers import PerceptGuideTrain
from lib.training import LabelFineTuner

from bundle.networks.model_file import ADAPTED_MODEL, PRETRAINED_MODEL, default_model_path
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

logger = logging.getLogger(__name__)

MODEL_NAME = "perceptguide"


class PerceptGuideApp(MONAILabelApp):
    """The bundle as one MONAI Label model, ``perceptguide``, with an infer and a train task."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        bundle_root = Path(app_dir).resolve().parents[1]
        model_path = Path(conf.get("model_path") or default_model_path(bundle_root))
        if not conf.get("model_path") and model_path.name == PRETRAINED_MODEL.name and model_path.is_file():
            # the app trains what it serves: the shipped weights stay as they are, a copy learns
            model_path = shutil.copyfile(model_path, bundle_root / ADAPTED_MODEL)
            logger.info("serving and training %s, a copy of the shipped %s", model_path, PRETRAINED_MODEL)
        if not model_path.is_file():
            raise FileNotFoundError(
                f"no weights to serve at {model_path}: fetch the shipped ones (docs/download.md), run `make demo` "
                "(it writes models/model.pt) or start with --conf model_path FILE"
            )
        device = conf.get("device") or None
        self.inference = BundleInference(
            bundle_root,
            model_path,
            device=device,
            defaults={name: conf.get(name, "") for name in PROMPT_NAMES},
            postprocessing={key: conf[key] for key in POSTPROCESSING_KEYS if key in conf},
            runtime={key: conf[key] for key in RUNTIME_KEYS if key in conf},
        )
        self.tuner = LabelFineTuner(bundle_root, model_path, device=device)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="PerceptGuide",
            description="Prompt-guided ultrasound segmentation and classification (PerceptGuide bundle)",
            version=json.loads((bundle_root / "configs" / "metadata.json").read_text())["version"],
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {MODEL_NAME: PerceptGuideInfer(self.inference)}

    def init_trainers(self) -> dict[str, TrainTask]:
        defaults = {name: self.inference.defaults[name] for name in ("organ", "object_type")}
        return {MODEL_NAME: PerceptGuideTrain(self.tuner, defaults)}

    def infer(self, request: dict[str, Any], datastore=None) -> dict[str, Any]:
        """MONAI Label's infer, with an unknown image id or model answered by a 404 naming it."""
        image = request.get("image")
        store = datastore or self.datastore()
        if isinstance(image, str) and not Path(image).exists() and not store.get_image_uri(image):
            raise HTTPException(status_code=404, detail=f"image '{image}' is not in the datastore")
        if request.get("model") not in self._infers:
            raise HTTPException(status_code=404, detail=f"unknown model '{request.get('model')}'; models: {list(self._infers)}")
        return super().infer(request, datastore)
