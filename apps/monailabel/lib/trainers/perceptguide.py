"""MONAI Label train task: the datastore's final labels through the bundle's sync or fine-tuning stage.

The work is in :mod:`..training`; this class only reads the request and the datastore.
"""

from __future__ import annotations

import logging
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from ..training import TRAIN_MODES, LabelFineTuner

__all__ = ["PerceptGuideTrain"]

logger = logging.getLogger(__name__)


class PerceptGuideTrain(TrainTask):
    """Trains the served checkpoint on the datastore's final labels.

    Request params: ``mode`` (``sync``: prompt projections only, the default; ``full``: every
    weight), ``max_epochs`` (default 1), ``organ`` / ``object_type`` (the labels' prompts,
    default the app's). The stage's checkpoint replaces the served one, so the next /infer uses
    it; progress lines go to the server's train status.

    Args:
        tuner: runs the stages and publishes their checkpoint.
        defaults: ``organ`` and ``object_type`` of the labels when a request gives none.
    """

    def __init__(self, tuner: LabelFineTuner, defaults: dict[str, str]) -> None:
        super().__init__("Train PerceptGuide on the datastore's final labels (sync or full)")
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
