"""MONAI Label app serving this bundle: ``monailabel start_server --app bundle/label ...``.

Start it with ``scripts/label_server.sh STUDIES_DIR PORT`` (docs/label.md). App options, given
as ``--conf KEY VALUE`` (all optional):

- ``model_path``: checkpoint to serve and fine-tune (default ``<bundle>/models/model.pt``).
- ``configs``: comma-separated config files applied after ``configs/inference.yaml`` (and after
  the training config), relative to the bundle; default ``configs/cpu.yaml``, the network
  setting of the CPU main job that writes ``models/model.pt``. ``none`` for the paper setting.
- ``organ``, ``object_type``, ``mode``: default prompt names (else the inference config's).
- ``device``: e.g. ``cpu`` or ``cuda:0`` (default: the config's choice).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

from bundle.label.inference import BundleInference
from bundle.label.tasks import PerceptGuideInfer, PerceptGuideTrain
from bundle.label.training import LabelFineTuner

logger = logging.getLogger(__name__)

MODEL_NAME = "perceptguide"
DEFAULT_OVERRIDES = "configs/cpu.yaml"


class PerceptGuideApp(MONAILabelApp):
    """The bundle as one MONAI Label model, ``perceptguide``, with an infer and a train task."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundle_root = Path(app_dir).resolve().parents[1]
        model_path = Path(conf.get("model_path") or self.bundle_root / "models" / "model.pt")
        if not model_path.is_file():
            raise FileNotFoundError(
                f"no weights to serve at {model_path}: run `make demo` (it writes models/model.pt) "
                "or start with --conf model_path FILE"
            )
        names = conf.get("configs", DEFAULT_OVERRIDES)
        overrides = [] if names == "none" else [self.bundle_root / name.strip() for name in names.split(",") if name.strip()]
        missing = [str(f) for f in overrides if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"--conf configs names files that do not exist: {missing}")
        device = conf.get("device")
        config_overrides: dict[str, Any] = {"bundle_root": str(self.bundle_root), "num_workers": 0}
        if device:
            config_overrides["device"] = f"$torch.device('{device}')"
        self.inference = BundleInference(
            [self.bundle_root / "configs" / "inference.yaml", *overrides],
            model_path,
            overrides=config_overrides,
            defaults={name: conf.get(name, "") for name in ("organ", "object_type", "mode")},
        )
        self.tuner = LabelFineTuner(self.bundle_root, model_path, overrides, self.inference.vocabulary, device)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="PerceptGuide",
            description="Prompt-guided ultrasound segmentation and classification (PerceptGuide bundle)",
            version=json.loads((self.bundle_root / "configs" / "metadata.json").read_text())["version"],
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {MODEL_NAME: PerceptGuideInfer(self.inference)}

    def init_trainers(self) -> dict[str, TrainTask]:
        defaults = {name: self.inference.defaults[name] for name in ("organ", "object_type")}
        return {MODEL_NAME: PerceptGuideTrain(self.tuner, defaults)}

    def infer(self, request: dict[str, Any], datastore=None) -> dict[str, Any]:
        """MONAI Label's infer, with an unknown image id answered by a 404 naming it."""
        image = request.get("image")
        store = datastore or self.datastore()
        if isinstance(image, str) and not Path(image).exists() and not store.get_image_uri(image):
            raise HTTPException(status_code=404, detail=f"image '{image}' is not in the datastore")
        if request.get("model") not in self._infers:
            raise HTTPException(status_code=404, detail=f"unknown model '{request.get('model')}'; models: {list(self._infers)}")
        return super().infer(request, datastore)
